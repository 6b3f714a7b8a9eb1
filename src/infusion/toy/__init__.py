"""The paper's 2-D toy analysis of overfitting (Sec. 3.2-3.3, Figs. 4-6): ``infusion toy``."""

from infusion.toy.data import Mixture, Segments, count_modes
from infusion.toy.experiment import METHODS, customise, settings, train_foundation
from infusion.toy.model import InfusionToy, ToyDenoiser

__all__ = ["Mixture", "Segments", "count_modes", "METHODS", "customise", "settings", "train_foundation",
           "InfusionToy", "ToyDenoiser"]
