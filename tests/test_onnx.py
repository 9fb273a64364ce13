from .conformance import FormatConformance


class TestONNXConformance(FormatConformance):
    suffix = ".onnx"
