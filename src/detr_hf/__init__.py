"""detr_hf: DETR object detection for the Hugging Face ecosystem (importing it registers the Auto classes)."""

from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

from .configuration_detr_hf import DetrHfConfig
from .modeling_detr_hf import (
    DetrHfForObjectDetection,
    DetrHfModel,
    DetrHfModelOutput,
    DetrHfObjectDetectionOutput,
    DetrHfPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(DetrHfConfig.model_type, DetrHfConfig, exist_ok=True)
AutoModel.register(DetrHfConfig, DetrHfModel, exist_ok=True)
AutoModelForObjectDetection.register(DetrHfConfig, DetrHfForObjectDetection, exist_ok=True)

__all__ = [
    "DetrHfConfig",
    "DetrHfForObjectDetection",
    "DetrHfModel",
    "DetrHfModelOutput",
    "DetrHfObjectDetectionOutput",
    "DetrHfPreTrainedModel",
]
