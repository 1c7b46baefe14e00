"""Vector quantizers turning Mimi latents into discrete codes and back."""

from moshi.quantization.codebook import EuclideanCodebook
from moshi.quantization.split import SplitResidualVectorQuantizer
from moshi.quantization.vq import ResidualVectorQuantization, ResidualVectorQuantizer, VectorQuantization

__all__ = [
    "EuclideanCodebook",
    "ResidualVectorQuantization",
    "ResidualVectorQuantizer",
    "SplitResidualVectorQuantizer",
    "VectorQuantization",
]
