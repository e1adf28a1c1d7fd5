"""MHA -> GQA -> MQA conversion (`convert`) and uptraining the converted model (`uptrain`).

Imports point downward: ``convert`` uses ``prune`` (objectives, the training loop), ``models``
and ``nn``; ``report`` and ``cli`` use it.
"""

from headcount.convert.convert import METHODS, Moments, convert, cover, input_moments
from headcount.convert.uptrain import UptrainResult, uptrain

__all__ = ["METHODS", "Moments", "UptrainResult", "convert", "cover", "input_moments", "uptrain"]
