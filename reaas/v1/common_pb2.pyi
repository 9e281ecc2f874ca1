from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    UINT8: _ClassVar[DType]

class Norm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    L2: _ClassVar[Norm]
    LINF: _ClassVar[Norm]

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUTO: _ClassVar[Method]
    LIPSCHITZ: _ClassVar[Method]
    IBP: _ClassVar[Method]
    CROWN_IBP: _ClassVar[Method]
    CROWN: _ClassVar[Method]
    LOCAL_LIPSCHITZ: _ClassVar[Method]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
UINT8: DType
L2: Norm
LINF: Norm
AUTO: Method
LIPSCHITZ: Method
IBP: Method
CROWN_IBP: Method
CROWN: Method
LOCAL_LIPSCHITZ: Method

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("queries", "request_bytes", "response_bytes")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    queries: int
    request_bytes: int
    response_bytes: int
    def __init__(self, queries: _Optional[int] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "model_sha256", "input_shape", "input_min", "input_max", "feature_dim", "lipschitz_bound_l2", "feature_spread", "max_batch_size", "execution_provider", "model_card_json", "synbench_score", "synbench_threshold_accuracy", "lipschitz_bound_verified", "served_precision", "float_margin_l2")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_MIN_FIELD_NUMBER: _ClassVar[int]
    INPUT_MAX_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    LIPSCHITZ_BOUND_L2_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SPREAD_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_JSON_FIELD_NUMBER: _ClassVar[int]
    SYNBENCH_SCORE_FIELD_NUMBER: _ClassVar[int]
    SYNBENCH_THRESHOLD_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LIPSCHITZ_BOUND_VERIFIED_FIELD_NUMBER: _ClassVar[int]
    SERVED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    FLOAT_MARGIN_L2_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_sha256: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_min: float
    input_max: float
    feature_dim: int
    lipschitz_bound_l2: float
    feature_spread: float
    max_batch_size: int
    execution_provider: str
    model_card_json: str
    synbench_score: float
    synbench_threshold_accuracy: float
    lipschitz_bound_verified: bool
    served_precision: str
    float_margin_l2: float
    def __init__(self, model_name: _Optional[str] = ..., model_sha256: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_min: _Optional[float] = ..., input_max: _Optional[float] = ..., feature_dim: _Optional[int] = ..., lipschitz_bound_l2: _Optional[float] = ..., feature_spread: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., execution_provider: _Optional[str] = ..., model_card_json: _Optional[str] = ..., synbench_score: _Optional[float] = ..., synbench_threshold_accuracy: _Optional[float] = ..., lipschitz_bound_verified: _Optional[bool] = ..., served_precision: _Optional[str] = ..., float_margin_l2: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
