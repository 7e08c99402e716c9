"""The Inception models. Work in progress (issue 3): inception_v3 is here; the other five follow."""
from inception_fast.models.inception_v3 import Inception3, InceptionOutputs, inception_v3

__all__ = ["Inception3", "InceptionOutputs", "inception_v3"]
