from .gram import gram_volume
from .losses import ReIDLoss, reid_loss
from .triplet import TripletLoss, euclidean_dist

__all__ = ["gram_volume", "ReIDLoss", "reid_loss", "TripletLoss", "euclidean_dist"]
