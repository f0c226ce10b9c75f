"""What the pool raises to a caller. Each carries its data and reads well as text;
the gateway maps each class to an HTTP status (gateway/errors.py)."""

from __future__ import annotations


class PoolError(Exception):
    """Base class: a request the pool could not serve."""

    code = "pool_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class UnknownModel(PoolError):
    code = "model_not_found"

    def __init__(self, model: str, available: list[str]) -> None:
        super().__init__(
            f"The model '{model}' does not exist; available: {', '.join(available)}",
            param="model",
        )
        self.model = model


class QueueFull(PoolError):
    code = "queue_full"

    def __init__(self, model: str, size: int, retry_after: float) -> None:
        super().__init__(f"model '{model}' has {size} requests waiting, its queue is full; "
                         "retry later")
        self.retry_after = retry_after


class Unavailable(PoolError):
    """No worker can serve: the model's workers failed to boot, or the pool drains."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadInput(PoolError):
    """The worker refused the job's input (undecodable audio, a bad option)."""

    code = "invalid_audio"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param)
        if code:
            self.code = code


class InputCrashedWorker(PoolError):
    """The job killed a worker on every attempt; its input is quarantined."""

    code = "input_crashed_worker"

    def __init__(self, message: str, reasons: tuple[str, ...], fingerprint: str) -> None:
        super().__init__(message)
        self.reasons = reasons
        self.fingerprint = fingerprint


class DeadlineExceeded(PoolError):
    code = "deadline_exceeded"


class JobError(PoolError):
    """The worker reported an internal error running the job."""

    code = "worker_error"
