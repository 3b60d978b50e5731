"""MDReID: Modality-Decoupled Learning for Any-to-Any Multi-Modal Object Re-Identification (Feng et al.,
NeurIPS 2025).

The modalities go through the shared ViT as one stacked batch. With ``add_share`` each image carries a second
learnable token right after its class token, the *shared* token: it is the encoder's class embedding itself
(one parameter under two roles, as in the authors' code) with a position-embedding row of its own
(``shared_pos_embed``, initialised to the class token's row), and it gets no camera embedding. Per modality m
the class token is the modality-specific feature g_m and the shared token's output the modality-shared
feature s_m.

Heads: one BN neck + classifier per modality on g_m (or, ``direct``, one on the shared features, whose
triplet term reads [g ; s]), and a ``shared`` head on [s_1 .. s_M]. The losses (``loss.MDReIDLoss``) read the
heads and the ``specific`` / ``shared`` features the training forward returns.

Evaluation: with ``add_share`` only the present modalities are encoded (``present_only``; the eval forward's
``missing`` names the absent ones) and the feature is [g_m for present m] + [s_m for present m]; without it
the missing modalities' images are zeroed and all are encoded, the feature being [g_1 .. g_M]. Features are
taken before the BN necks.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.modalities import MODALITIES

from ...backbone import QuickGELU
from ...base import SharedEncoderModel, bn_neck, classifier


def global_local_reducer(dim):
    """LayerNorm(2D) -> Linear(2D, D) -> QuickGELU on [class token ; mean patch token] (GLOBAL_LOCAL)."""
    return nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim), QuickGELU())


class MDReID(SharedEncoderModel):
    """Args:
        backbone: an ``Encoder`` shared by the modalities (modeling/backbone.py); with ``add_share`` one that
            ``accepts_extra_tokens``.
        num_classes: training identities.
        direct: one head on the concatenated features (True) or one per modality plus the shared head (False).
        add_share: the shared token (ADD_SHARE).
        global_local: the specific feature is ``reducers[m]([class token ; mean patch token])`` (GLOBAL_LOCAL).
        pool_shared_in_training: with ``global_local`` and ``add_share``, the training mean also covers the
            shared token (the authors' code; their evaluation averages the patches only). False: the patches
            in both.
        eloss_heads: also build the authors' [specific ; shared] heads (``bottlenecks_eloss`` /
            ``classifiers_eloss``), which no loss reads: frozen; in training the RGB one runs on every
            modality (its BN statistics as the authors' ``bottleneck_rs``) and its scores are returned as
            ``eloss_scores``.
        feat_norm: L2-normalise the evaluation feature.
        modalities: the modality names of a batch, in order.
    """

    def __init__(self, backbone, num_classes: int, direct: bool = False, add_share: bool = True,
                 global_local: bool = False, pool_shared_in_training: bool = False, eloss_heads: bool = False,
                 feat_norm: bool = True, modalities=MODALITIES):
        super().__init__(backbone, num_classes, direct, modalities)
        d, M = backbone.out_dim, len(self.modalities)
        self.add_share, self.feat_norm = add_share, feat_norm
        self.pool_shared_in_training = pool_shared_in_training
        self.shared_pos_embed = None
        if add_share:
            if not getattr(backbone, "accepts_extra_tokens", False):
                raise ValueError("config: MODEL.MDREID.ADD_SHARE needs a plain ViT backbone whose position embedding "
                                 "covers [class, patches] (MODEL.TRANSFORMER_TYPE ViT-B-16, vit_base_patch16_224 or "
                                 "vit_custom)")
            # the shared token's position row starts as the class token's (the CLS row duplicated at load)
            self.shared_pos_embed = nn.Parameter(backbone.vit.pos_embed[:, :1].detach().clone())
            if not direct:
                self.bottleneck_shared = bn_neck(M * d)
                self.classifier_shared = classifier(M * d, num_classes)
        self.reducers = nn.ModuleDict({m: global_local_reducer(d) for m in self.modalities}) if global_local else None
        self.eloss_heads = bool(eloss_heads and add_share and not direct)
        if self.eloss_heads:
            self.bottlenecks_eloss = nn.ModuleDict({m: bn_neck(2 * d) for m in self.modalities})
            self.classifiers_eloss = nn.ModuleDict({m: classifier(2 * d, num_classes) for m in self.modalities})
            for p in [*self.bottlenecks_eloss.parameters(), *self.classifiers_eloss.parameters()]:
                p.requires_grad_(False)  # no loss reads them: they would never receive a gradient

    @property
    def present_only(self):
        """Whether evaluation encodes the present modalities only (the eval forward's ``missing``)."""
        return self.add_share

    @property
    def missing_rule(self):
        """How the engine evaluates with modalities missing (``engine.inference.MISSING_RULES``): 'present'
        (``missing=`` names them; only the others are encoded) with the shared token, else 'zero'."""
        return "present" if self.add_share else "zero"

    @property
    def feat_dim(self):
        """Width of the evaluation feature with every modality present."""
        return (2 if self.add_share else 1) * len(self.modalities) * self.backbone.out_dim

    def encode(self, images, cam_label=None):
        """The shared encoder as this model runs it (with the shared token when ADD_SHARE) on every modality
        -> (class tokens [B, M, D], patch tokens [B, M, N, D]); what the tools read (t-SNE, Grad-CAM)."""
        cls, _, patches = self.encode_present(images, cam_label, self.modalities)
        return cls, patches

    def encode_present(self, images, cam_label, present):
        """The modalities ``present`` as one stacked batch -> (class tokens [B, P, D], shared tokens [B, P, D] or
        None, patch tokens [B, P, N, D])."""
        P = len(present)
        x = torch.cat([images[m] for m in present], 0)
        cams = cam_label.repeat(P) if cam_label is not None else None
        if self.add_share:
            shared = self.backbone.vit.cls_token + self.shared_pos_embed
            cls, tokens = self.backbone(x, cams, extra_tokens=shared)
        else:
            cls, tokens = self.backbone(x, cams)
        B = x.shape[0] // P
        cls = cls.view(P, B, -1).transpose(0, 1)
        tokens = tokens.view(P, B, *tokens.shape[1:]).transpose(0, 1)
        if not self.add_share:
            return cls, None, tokens
        return cls, tokens[:, :, 0], tokens[:, :, 1:]

    def specific(self, cls, shared, patches, present):
        """The modality-specific features [B, P, D]: the class tokens, or under GLOBAL_LOCAL each modality's
        reducer on [class token ; mean token]."""
        if self.reducers is None:
            return cls
        if self.training and self.pool_shared_in_training and shared is not None:
            local = torch.cat([shared[:, :, None], patches], 2).mean(2)
        else:
            local = patches.mean(2)
        return torch.stack([self.reducers[m](torch.cat([cls[:, i], local[:, i]], -1))
                            for i, m in enumerate(present)], 1)

    def forward(self, images, cam_label=None, missing=()):
        """Training: {'heads', 'specific' [B, M, D], 'shared' [B, M, D] (ADD_SHARE), 'eloss_scores'
        (``eloss_heads``)}. Evaluation: the feature [B, F]; ``missing``: names of the modalities absent from
        ``images`` (not encoded with ``present_only``, else zeroed)."""
        if self.training:
            return self.training_outputs(images, cam_label)
        missing = tuple(missing or ())
        unknown = [m for m in missing if m not in self.modalities]
        present = tuple(m for m in self.modalities if m not in missing)
        if unknown or not present:
            raise ValueError(f"missing must name modalities of the model ({', '.join(self.modalities)}) and leave at "
                             f"least one present, got {list(missing)}")
        if self.present_only:
            cls, shared, patches = self.encode_present(images, cam_label, present)
            feat = torch.cat([self.specific(cls, shared, patches, present).flatten(1), shared.flatten(1)], 1)
        else:
            images = {m: torch.zeros_like(images[m]) if m in missing else images[m] for m in self.modalities}
            cls, shared, patches = self.encode_present(images, cam_label, self.modalities)
            feat = self.specific(cls, shared, patches, self.modalities).flatten(1)
        return F.normalize(feat, dim=1) if self.feat_norm else feat

    def pair_features(self, query, gallery, query_missing, gallery_missing):
        """Query and gallery features encoded with different modalities present, made comparable (the
        engine's any-to-any evaluation): the specific and shared chunks of the modalities present on both
        sides, or, with none in common, each side's mean shared token (the shared tokens are what MDReID
        makes modality-invariant); L2-normalised again with TEST.FEAT_NORM. Matched by modality name: the
        authors' select_feature matches by position and pads the narrower side with a copy of its own
        columns (docs/reproduction.md). Equal settings are returned as they are."""
        if tuple(query_missing) == tuple(gallery_missing) or not self.present_only:
            return query, gallery
        qp = [m for m in self.modalities if m not in query_missing]
        gp = [m for m in self.modalities if m not in gallery_missing]
        common = [m for m in qp if m in gp]

        def parts(feat, present):
            chunks = feat.chunk(2 * len(present), 1)
            return dict(zip(present, chunks[:len(present)])), dict(zip(present, chunks[len(present):]))

        (qg, qs), (gg, gs) = parts(query, qp), parts(gallery, gp)
        if common:
            query = torch.cat([qg[m] for m in common] + [qs[m] for m in common], 1)
            gallery = torch.cat([gg[m] for m in common] + [gs[m] for m in common], 1)
        else:
            query = torch.stack(list(qs.values())).mean(0)
            gallery = torch.stack(list(gs.values())).mean(0)
        if self.feat_norm:
            query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
        return query, gallery

    def training_outputs(self, images, cam_label=None):
        cls, shared, patches = self.encode_present(images, cam_label, self.modalities)
        g = self.specific(cls, shared, patches, self.modalities)
        if self.direct and shared is not None:
            # the neck and classifier read the shared features; the triplet term reads [g ; s]
            s = shared.flatten(1)
            heads = {"global": {"score": self.classifier(self.bottleneck(s)), "feat": torch.cat([g.flatten(1), s], 1)}}
        else:
            heads = self.class_token_heads(g)
        out = {"heads": heads, "specific": g}
        if shared is None:
            return out
        out["shared"] = shared
        if not self.direct:
            s = shared.flatten(1)
            heads["shared"] = {"score": self.classifier_shared(self.bottleneck_shared(s)), "feat": s}
        if self.eloss_heads:
            first = self.modalities[0]  # the authors' code runs its RGB head on every modality
            bn, fc = self.bottlenecks_eloss[first], self.classifiers_eloss[first]
            out["eloss_scores"] = {m: fc(bn(torch.cat([g[:, i], shared[:, i]], -1)))
                                   for i, m in enumerate(self.modalities)}
        return out
