from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScaleRequest(_message.Message):
    __slots__ = ("num_prefill", "num_decode", "num_colocated")
    NUM_PREFILL_FIELD_NUMBER: _ClassVar[int]
    NUM_DECODE_FIELD_NUMBER: _ClassVar[int]
    NUM_COLOCATED_FIELD_NUMBER: _ClassVar[int]
    num_prefill: int
    num_decode: int
    num_colocated: int
    def __init__(self, num_prefill: _Optional[int] = ..., num_decode: _Optional[int] = ..., num_colocated: _Optional[int] = ...) -> None: ...

class RemovedWorker(_message.Message):
    __slots__ = ("worker_id", "drained", "drain_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    DRAIN_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    drained: bool
    drain_s: float
    def __init__(self, worker_id: _Optional[str] = ..., drained: _Optional[bool] = ..., drain_s: _Optional[float] = ...) -> None: ...

class Pools(_message.Message):
    __slots__ = ("num_prefill", "num_decode", "num_colocated", "worker_ids")
    NUM_PREFILL_FIELD_NUMBER: _ClassVar[int]
    NUM_DECODE_FIELD_NUMBER: _ClassVar[int]
    NUM_COLOCATED_FIELD_NUMBER: _ClassVar[int]
    WORKER_IDS_FIELD_NUMBER: _ClassVar[int]
    num_prefill: int
    num_decode: int
    num_colocated: int
    worker_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_prefill: _Optional[int] = ..., num_decode: _Optional[int] = ..., num_colocated: _Optional[int] = ..., worker_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ScaleResponse(_message.Message):
    __slots__ = ("added", "removed", "pools")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedCompositeFieldContainer[RemovedWorker]
    pools: Pools
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[_Union[RemovedWorker, _Mapping]]] = ..., pools: _Optional[_Union[Pools, _Mapping]] = ...) -> None: ...

class GetPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
