"""detr_hf: DETR object detection for the Hugging Face ecosystem (importing it registers the Auto classes)."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoModelForObjectDetection,
    AutoVideoProcessor,
)

from .configuration_detr_hf import DetrHfConfig
from .image_processing_detr_hf import DetrHfImageProcessor
from .modeling_detr_hf import (
    DetrHfForObjectDetection,
    DetrHfModel,
    DetrHfModelOutput,
    DetrHfObjectDetectionOutput,
    DetrHfPreTrainedModel,
)
from .modeling_detr_hf_segmentation import DetrHfForSegmentation, DetrHfSegmentationOutput

__version__ = "0.1.0"

AutoConfig.register(DetrHfConfig.model_type, DetrHfConfig, exist_ok=True)
AutoModel.register(DetrHfConfig, DetrHfModel, exist_ok=True)
AutoModelForObjectDetection.register(DetrHfConfig, DetrHfForObjectDetection, exist_ok=True)
AutoModelForImageSegmentation.register(DetrHfConfig, DetrHfForSegmentation, exist_ok=True)
# One processor serves both backend slots (it is torch-based), so no "falling back to pil" warning.
AutoImageProcessor.register(
    DetrHfConfig,
    image_processor_classes={"torchvision": DetrHfImageProcessor, "pil": DetrHfImageProcessor},
    exist_ok=True,
)
# No video processor exists; saying so stops pipeline() from looking for a "DetrHfVideoProcessor" in the folder's
# remote code, which would prompt for trust_remote_code even though detr_hf is imported.
AutoVideoProcessor.register(DetrHfConfig, video_processor_classes={}, exist_ok=True)
# Saved folders carry their code: each class records itself in `auto_map` (see detr_hf.sharing).
DetrHfConfig.register_for_auto_class("AutoConfig")
DetrHfModel.register_for_auto_class("AutoModel")
DetrHfForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
DetrHfImageProcessor.register_for_auto_class("AutoImageProcessor")
DetrHfForSegmentation.register_for_auto_class("AutoModelForImageSegmentation")

__all__ = [
    "DetrHfConfig",
    "DetrHfForObjectDetection",
    "DetrHfForSegmentation",
    "DetrHfImageProcessor",
    "DetrHfModel",
    "DetrHfModelOutput",
    "DetrHfObjectDetectionOutput",
    "DetrHfPreTrainedModel",
    "DetrHfSegmentationOutput",
]
