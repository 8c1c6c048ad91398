"""The model part: the classifier, backbone handles, the offline MobileNetV2 and its pinned assets."""
