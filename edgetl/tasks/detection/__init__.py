"""Object detection's torch-free building blocks: annotated-image readers (COCO JSON, YOLO
folders, Pascal VOC XML) and the COCO writer.

May import ``edgetl.core``, ``edgetl.errors``, ``edgetl.modalities``, numpy and PIL; never torch.
"""

from edgetl.tasks.detection.coco import write_coco
from edgetl.tasks.detection.data import DETECTION_FORMATS, detect_format, read_detection_data
from edgetl.tasks.detection.records import COUNT_KEYS, DetectionData, DetectionItem

__all__ = ["read_detection_data", "detect_format", "write_coco", "DetectionData", "DetectionItem", "COUNT_KEYS",
           "DETECTION_FORMATS"]
