from reaas.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("images", "model_sha256")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    images: _common_pb2.Tensor
    model_sha256: str
    def __init__(self, images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., model_sha256: _Optional[str] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("features", "model_sha256", "usage")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    features: _common_pb2.Tensor
    model_sha256: str
    usage: _common_pb2.Usage
    def __init__(self, features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., model_sha256: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...
