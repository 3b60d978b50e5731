from .gram import gram_volume
from .losses import SignalLoss, build_loss
from .triplet import TripletLoss, euclidean_dist

__all__ = ["gram_volume", "SignalLoss", "build_loss", "TripletLoss", "euclidean_dist"]
