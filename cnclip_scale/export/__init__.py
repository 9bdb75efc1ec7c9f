"""Deployment exports: the two towers as ONNX graphs (``onnx.export_towers``) and an onnxruntime embedder
(``onnx_runtime.OnnxEmbedder``). Submodules are imported on use: torch's exporter and onnxruntime are heavy."""
