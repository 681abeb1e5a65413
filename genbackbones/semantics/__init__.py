"""The generator as a labelled-data factory (papers 000 §2, 002, 003, 004).

A StyleGAN2's activations project onto semantic masks with a light or even linear
decoder trained on a handful of annotated generated images, or with no annotation
at all by clustering them (KLiSH). Applied to fresh samples, such an extractor turns
the generator into a stream of (image, mask) pairs for training a segmentation
network.

One concept per module:

- `activations`: deterministic generation from seeds; every selected layer's activations.
- `extractors`: the linear (LSE), nonlinear (NSE-1) and light-decoder extractors, and the
  cluster extractors KLiSH / k-means write; one interface, safetensors + JSON on disk.
- `annotate`: train an extractor on user masks of generated images (cross-entropy).
- `klish`: KLiSH clustering (and the plain k-means baseline), the merge tree and its PNG.
- `synthesize`: resumable, deterministic (image, mask) dataset writing.
- `cli`: the `annotate`, `cluster` and `synthesize` commands.
"""

from __future__ import annotations
