"""The model: bundles on disk, the nnU-Net segmenter, orientation to LPS and the post-processing of its labels."""
