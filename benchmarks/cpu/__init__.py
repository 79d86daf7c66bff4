"""The CPU suite against the peers (run, measure, engines, onnx_export) and the pytest-benchmark guards."""
