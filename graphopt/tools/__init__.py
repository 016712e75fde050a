"""Developer tools built on graphopt and kept out of its core: the ONNX conformance harness
(`onnx_conformance`) and the runtime bundle builder (`bundle`, with the runner it copies into
each bundle). Their command lines are in the repository's tools/ folder."""
