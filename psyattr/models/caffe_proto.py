"""The part of Caffe's `caffe.proto` that the importer needs, built at run time (no Caffe, no protoc).

Field numbers are Caffe's own, so real `.caffemodel`, `.binaryproto` and `.prototxt` files parse;
fields not declared here are skipped by the protobuf parser.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TYPES = {
    "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32, "int64": _F.TYPE_INT64, "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
}

# V1LayerParameter.LayerType, the enum of the 2014-2015 `layers { type: CONVOLUTION }` format.
V1_LAYER_TYPES = {
    "NONE": 0, "ACCURACY": 1, "BNLL": 2, "CONCAT": 3, "CONVOLUTION": 4, "DATA": 5, "DROPOUT": 6,
    "EUCLIDEAN_LOSS": 7, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MULTINOMIAL_LOGISTIC_LOSS": 16, "POOLING": 17,
    "RELU": 18, "SIGMOID": 19, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "TANH": 23,
    "WINDOW_DATA": 24, "ELTWISE": 25, "POWER": 26, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "HINGE_LOSS": 28,
    "MEMORY_DATA": 29, "ARGMAX": 30, "THRESHOLD": 31, "DUMMY_DATA": 32, "SLICE": 33, "MVN": 34,
    "ABSVAL": 35, "SILENCE": 36, "CONTRASTIVE_LOSS": 37, "EXP": 38, "DECONVOLUTION": 39,
}

# Enums nested in messages: {message: (enum name, {value name: number})}.
_ENUMS = {
    "V1LayerParameter": ("LayerType", V1_LAYER_TYPES),
    "PoolingParameter": ("PoolMethod", {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    "LRNParameter": ("NormRegion", {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}),
}

# (message, [(field name, number, type or message name, repeated, packed)])
_MESSAGES = [
    ("BlobShape", [("dim", 1, "int64", True, True)]),
    ("BlobProto", [
        ("num", 1, "int32", False, False), ("channels", 2, "int32", False, False),
        ("height", 3, "int32", False, False), ("width", 4, "int32", False, False),
        ("data", 5, "float", True, True), ("diff", 6, "float", True, True),
        ("shape", 7, ".caffe.BlobShape", False, False), ("double_data", 8, "double", True, True),
    ]),
    ("ConvolutionParameter", [
        ("num_output", 1, "uint32", False, False), ("bias_term", 2, "bool", False, False),
        ("pad", 3, "uint32", True, False), ("kernel_size", 4, "uint32", True, False),
        ("group", 5, "uint32", False, False), ("stride", 6, "uint32", True, False),
        ("pad_h", 9, "uint32", False, False), ("pad_w", 10, "uint32", False, False),
        ("kernel_h", 11, "uint32", False, False), ("kernel_w", 12, "uint32", False, False),
        ("stride_h", 13, "uint32", False, False), ("stride_w", 14, "uint32", False, False),
    ]),
    ("InnerProductParameter", [
        ("num_output", 1, "uint32", False, False), ("bias_term", 2, "bool", False, False),
        ("axis", 5, "int32", False, False), ("transpose", 6, "bool", False, False),
    ]),
    ("PoolingParameter", [
        ("pool", 1, ".caffe.PoolingParameter.PoolMethod", False, False), ("kernel_size", 2, "uint32", False, False),
        ("stride", 3, "uint32", False, False), ("pad", 4, "uint32", False, False),
        ("global_pooling", 12, "bool", False, False),
    ]),
    ("LRNParameter", [
        ("local_size", 1, "uint32", False, False), ("alpha", 2, "float", False, False),
        ("beta", 3, "float", False, False), ("norm_region", 4, ".caffe.LRNParameter.NormRegion", False, False),
        ("k", 5, "float", False, False),
    ]),
    ("DropoutParameter", [("dropout_ratio", 1, "float", False, False)]),
    ("InputParameter", [("shape", 1, ".caffe.BlobShape", True, False)]),
    ("LayerParameter", [
        ("name", 1, "string", False, False), ("type", 2, "string", False, False),
        ("bottom", 3, "string", True, False), ("top", 4, "string", True, False),
        ("blobs", 7, ".caffe.BlobProto", True, False),
        ("convolution_param", 106, ".caffe.ConvolutionParameter", False, False),
        ("dropout_param", 108, ".caffe.DropoutParameter", False, False),
        ("inner_product_param", 117, ".caffe.InnerProductParameter", False, False),
        ("lrn_param", 118, ".caffe.LRNParameter", False, False),
        ("pooling_param", 121, ".caffe.PoolingParameter", False, False),
        ("input_param", 143, ".caffe.InputParameter", False, False),
    ]),
    ("V1LayerParameter", [
        ("bottom", 2, "string", True, False), ("top", 3, "string", True, False),
        ("name", 4, "string", False, False), ("type", 5, ".caffe.V1LayerParameter.LayerType", False, False),
        ("blobs", 6, ".caffe.BlobProto", True, False),
        ("convolution_param", 10, ".caffe.ConvolutionParameter", False, False),
        ("dropout_param", 12, ".caffe.DropoutParameter", False, False),
        ("inner_product_param", 17, ".caffe.InnerProductParameter", False, False),
        ("lrn_param", 18, ".caffe.LRNParameter", False, False),
        ("pooling_param", 19, ".caffe.PoolingParameter", False, False),
    ]),
    ("NetParameter", [
        ("name", 1, "string", False, False), ("layers", 2, ".caffe.V1LayerParameter", True, False),
        ("input", 3, "string", True, False), ("input_dim", 4, "int32", True, False),
        ("input_shape", 8, ".caffe.BlobShape", True, False), ("layer", 100, ".caffe.LayerParameter", True, False),
    ]),
]


def _build_pool() -> descriptor_pool.DescriptorPool:
    file_proto = descriptor_pb2.FileDescriptorProto(name="psyattr_caffe_subset.proto", package="caffe")
    file_proto.syntax = "proto2"
    for message_name, fields in _MESSAGES:
        message = file_proto.message_type.add(name=message_name)
        for field_name, number, kind, repeated, packed in fields:
            field = message.field.add(name=field_name, number=number, label=_REP if repeated else _OPT)
            if kind in _TYPES:
                field.type = _TYPES[kind]
            elif kind.rsplit(".", 1)[-1] in {name for name, _ in _ENUMS.values()}:
                field.type, field.type_name = _F.TYPE_ENUM, kind
            else:
                field.type, field.type_name = _F.TYPE_MESSAGE, kind
            if packed:
                field.options.packed = True
        if message_name in _ENUMS:
            enum_name, values = _ENUMS[message_name]
            enum = message.enum_type.add(name=enum_name)
            for value_name, value in values.items():
                enum.value.add(name=value_name, number=value)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return pool


_POOL = _build_pool()
NetParameter = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("caffe.NetParameter"))
BlobProto = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("caffe.BlobProto"))
