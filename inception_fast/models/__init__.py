"""The Inception models, with the module names of the peer each one is a drop-in for.

    >>> import inception_fast.models as models
    >>> m = models.create_model("inception_v3", num_classes=10)
    >>> models.list_models()
"""
from inception_fast.models._base import GlobalPool2d, InceptionModel
from inception_fast.models._registry import create_model, list_models, register_model
from inception_fast.models._weights import load_pretrained, load_weights
from inception_fast.models.inception_v3 import Inception3, InceptionOutputs, inception_v3

__all__ = [
    "GlobalPool2d", "Inception3", "InceptionModel", "InceptionOutputs", "create_model", "inception_v3",
    "list_models", "load_pretrained", "load_weights", "register_model",
]
