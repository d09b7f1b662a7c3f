"""ONNX export of trained SDNet runs and the TensorFlow-free onnxruntime inference package.

Only the package boundary exists so far; nothing here is importable API yet.
"""
