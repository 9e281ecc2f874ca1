from reaas.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SemanticPerturbation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BRIGHTNESS: _ClassVar[SemanticPerturbation]
    CONTRAST: _ClassVar[SemanticPerturbation]
    BRIGHTNESS_CONTRAST: _ClassVar[SemanticPerturbation]
BRIGHTNESS: SemanticPerturbation
CONTRAST: SemanticPerturbation
BRIGHTNESS_CONTRAST: SemanticPerturbation

class F2IPerturbRequest(_message.Message):
    __slots__ = ("images", "feature_radius", "norm", "method", "relative_tolerance", "model_sha256", "clip_to_pixel_box")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_RADIUS_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIP_TO_PIXEL_BOX_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.Tensor
    feature_radius: _containers.RepeatedScalarFieldContainer[float]
    norm: _common_pb2.Norm
    method: _common_pb2.Method
    relative_tolerance: float
    model_sha256: str
    clip_to_pixel_box: bool
    def __init__(self, images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., feature_radius: _Optional[_Iterable[float]] = ..., norm: _Optional[_Union[_common_pb2.Norm, str]] = ..., method: _Optional[_Union[_common_pb2.Method, str]] = ..., relative_tolerance: _Optional[float] = ..., model_sha256: _Optional[str] = ..., clip_to_pixel_box: _Optional[bool] = ...) -> None: ...

class F2IPerturbResponse(_message.Message):
    __slots__ = ("image_radius", "method_used", "model_sha256", "usage", "search_completed")
    IMAGE_RADIUS_FIELD_NUMBER: _ClassVar[int]
    METHOD_USED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    image_radius: _containers.RepeatedScalarFieldContainer[float]
    method_used: _containers.RepeatedScalarFieldContainer[_common_pb2.Method]
    model_sha256: str
    usage: _common_pb2.Usage
    search_completed: bool
    def __init__(self, image_radius: _Optional[_Iterable[float]] = ..., method_used: _Optional[_Iterable[_Union[_common_pb2.Method, str]]] = ..., model_sha256: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., search_completed: _Optional[bool] = ...) -> None: ...

class F2IPerturbCurveRequest(_message.Message):
    __slots__ = ("images", "norm", "method", "model_sha256", "clip_to_pixel_box", "num_radii", "min_radius", "max_radius")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLIP_TO_PIXEL_BOX_FIELD_NUMBER: _ClassVar[int]
    NUM_RADII_FIELD_NUMBER: _ClassVar[int]
    MIN_RADIUS_FIELD_NUMBER: _ClassVar[int]
    MAX_RADIUS_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.Tensor
    norm: _common_pb2.Norm
    method: _common_pb2.Method
    model_sha256: str
    clip_to_pixel_box: bool
    num_radii: int
    min_radius: float
    max_radius: float
    def __init__(self, images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., norm: _Optional[_Union[_common_pb2.Norm, str]] = ..., method: _Optional[_Union[_common_pb2.Method, str]] = ..., model_sha256: _Optional[str] = ..., clip_to_pixel_box: _Optional[bool] = ..., num_radii: _Optional[int] = ..., min_radius: _Optional[float] = ..., max_radius: _Optional[float] = ...) -> None: ...

class RadiusCurve(_message.Message):
    __slots__ = ("image_radius", "feature_shift_bound")
    IMAGE_RADIUS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHIFT_BOUND_FIELD_NUMBER: _ClassVar[int]
    image_radius: _containers.RepeatedScalarFieldContainer[float]
    feature_shift_bound: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, image_radius: _Optional[_Iterable[float]] = ..., feature_shift_bound: _Optional[_Iterable[float]] = ...) -> None: ...

class F2IPerturbCurveResponse(_message.Message):
    __slots__ = ("features", "curves", "method_used", "model_sha256", "usage", "search_completed")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CURVES_FIELD_NUMBER: _ClassVar[int]
    METHOD_USED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    features: _common_pb2.Tensor
    curves: _containers.RepeatedCompositeFieldContainer[RadiusCurve]
    method_used: _containers.RepeatedScalarFieldContainer[_common_pb2.Method]
    model_sha256: str
    usage: _common_pb2.Usage
    search_completed: bool
    def __init__(self, features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., curves: _Optional[_Iterable[_Union[RadiusCurve, _Mapping]]] = ..., method_used: _Optional[_Iterable[_Union[_common_pb2.Method, str]]] = ..., model_sha256: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., search_completed: _Optional[bool] = ...) -> None: ...

class F2ISemanticRequest(_message.Message):
    __slots__ = ("images", "feature_radius", "perturbation", "method", "relative_tolerance", "model_sha256", "contrast_per_brightness")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_RADIUS_FIELD_NUMBER: _ClassVar[int]
    PERTURBATION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_PER_BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.Tensor
    feature_radius: _containers.RepeatedScalarFieldContainer[float]
    perturbation: SemanticPerturbation
    method: _common_pb2.Method
    relative_tolerance: float
    model_sha256: str
    contrast_per_brightness: float
    def __init__(self, images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., feature_radius: _Optional[_Iterable[float]] = ..., perturbation: _Optional[_Union[SemanticPerturbation, str]] = ..., method: _Optional[_Union[_common_pb2.Method, str]] = ..., relative_tolerance: _Optional[float] = ..., model_sha256: _Optional[str] = ..., contrast_per_brightness: _Optional[float] = ...) -> None: ...

class F2ISemanticResponse(_message.Message):
    __slots__ = ("brightness", "contrast", "l2_equivalent", "method_used", "model_sha256", "usage", "search_completed")
    BRIGHTNESS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    L2_EQUIVALENT_FIELD_NUMBER: _ClassVar[int]
    METHOD_USED_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    brightness: _containers.RepeatedScalarFieldContainer[float]
    contrast: _containers.RepeatedScalarFieldContainer[float]
    l2_equivalent: _containers.RepeatedScalarFieldContainer[float]
    method_used: _containers.RepeatedScalarFieldContainer[_common_pb2.Method]
    model_sha256: str
    usage: _common_pb2.Usage
    search_completed: bool
    def __init__(self, brightness: _Optional[_Iterable[float]] = ..., contrast: _Optional[_Iterable[float]] = ..., l2_equivalent: _Optional[_Iterable[float]] = ..., method_used: _Optional[_Iterable[_Union[_common_pb2.Method, str]]] = ..., model_sha256: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., search_completed: _Optional[bool] = ...) -> None: ...
