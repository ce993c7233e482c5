"""Object detection's torch-free building blocks: annotated-image readers (COCO JSON, YOLO
folders, Pascal VOC XML) and the COCO writer, letterbox geometry, IoU, NMS equal to
torchvision's, FCOS-style box coding and target assignment, COCO metrics equal to
pycocotools', and drawing detections on images.

May import ``edgetl.core``, ``edgetl.errors``, ``edgetl.modalities``, numpy and PIL; never torch.
"""

from edgetl.tasks.detection.boxes import (LETTERBOX_FILL, Assignment, Letterbox, assign_targets, batched_nms,
                                          box_iou, cell_centers, decode_boxes, encode_boxes, from_letterbox,
                                          letterbox, letterbox_image, nms, to_letterbox)
from edgetl.tasks.detection.data import DETECTION_FORMATS, detect_format, read_detection_data
from edgetl.tasks.detection.coco import write_coco
from edgetl.tasks.detection.draw import draw_detections, sanitize_label
from edgetl.tasks.detection.metric import coco_evaluate
from edgetl.tasks.detection.records import COUNT_KEYS, DetectionData, DetectionItem

__all__ = [
    # data
    "read_detection_data", "detect_format", "write_coco", "DetectionData", "DetectionItem", "COUNT_KEYS",
    "DETECTION_FORMATS",
    # geometry
    "Letterbox", "letterbox", "letterbox_image", "to_letterbox", "from_letterbox", "LETTERBOX_FILL",
    "box_iou", "nms", "batched_nms",
    "cell_centers", "encode_boxes", "decode_boxes", "Assignment", "assign_targets",
    # metric, drawing
    "coco_evaluate", "draw_detections", "sanitize_label",
]
