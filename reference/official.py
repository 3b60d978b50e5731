"""A transcription of the official Signal code (authors' repository) in plain tensor operations, used as
the reference the tests and the side-by-side benchmarks (tools/benchmark*.py) compare against: the checkpoint naming, the training forward and losses, the
optimizer's parameter rules and the LR schedules. Written from the official code's behaviour; it shares
no code with the package under test."""
import bisect
import math

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------
# Checkpoint naming
# ----------------------------------------------------------------------------------------------------
_VIT_RENAMES = [("patch_embed.proj", "conv1"), ("blocks.", "transformer.resblocks."), ("norm_pre", "ln_pre"),
                ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
                ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
_RENAMES = [("backbone.cam_embed", "clip_vision_encoder.cv_embed"), ("sim.selection.", "SIM.token_selection."),
            ("sim.interaction.", "SIM.modal_interactive."), ("classifier_sim.", "classifier_var."),
            ("bottleneck_sim.", "bottleneck_var."), ("gam.temperature", "AlignM.contra_temp"),
            ("lam.samplers.RGB.", "AlignM.DAS_r."), ("lam.samplers.NI.", "AlignM.DAS_n."),
            ("lam.samplers.TI.", "AlignM.DAS_t."), ("classifiers.RGB.", "classifier_r."),
            ("classifiers.NI.", "classifier_n."), ("classifiers.TI.", "classifier_t."),
            ("bottlenecks.RGB.", "bottleneck_r."), ("bottlenecks.NI.", "bottleneck_n."),
            ("bottlenecks.TI.", "bottleneck_t.")]


def official_name(name):
    """The official model's name of our parameter or buffer ``name``."""
    if name.startswith("backbone.vit."):
        k = name[len("backbone.vit."):]
        special = {"head.weight": "proj", "cls_token": "class_embedding", "pos_embed": "positional_embedding"}
        if k in special:
            return "clip_vision_encoder.base." + special[k]
        for a, b in _VIT_RENAMES:
            k = k.replace(a, b)
        if k.startswith("norm."):
            k = "ln_post." + k[len("norm."):]
        return "clip_vision_encoder.base." + k
    for a, b in _RENAMES:
        name = name.replace(a, b)
    return name


def to_official(name, v):
    """Our tensor ``v`` in the official layout (CLIP projection transposed, flat class embedding)."""
    if name == "backbone.vit.head.weight":
        return v.T
    if name == "backbone.vit.cls_token":
        return v.flatten()
    if name == "backbone.vit.pos_embed":
        return v[0]
    return v


def official_state_dict(model, half=True):
    """Our model's weights in the official checkpoint layout; ``half``: conv/linear weights of the CLIP
    tower in fp16 as in the released checkpoint. Includes the official, unused ``W_v`` projection."""
    out = {}
    for k, v in model.state_dict().items():
        name = official_name(k)
        v = to_official(k, v).clone()
        tower_matrix = name.startswith("clip_vision_encoder.base.") and v.dim() > 1 and ".ln_" not in name \
            and name.split(".")[2] not in ("class_embedding", "positional_embedding")
        out[name] = v.half() if half and tower_matrix else v
    d = model.sim.selection.W_q.weight.shape[0] if model.sim is not None else 0
    if d:
        g = torch.Generator().manual_seed(0)
        out["SIM.token_selection.W_v.weight"] = torch.randn(d, d, generator=g)
        out["SIM.token_selection.W_v.bias"] = torch.randn(d, generator=g)
    return out


# ----------------------------------------------------------------------------------------------------
# Forward (make_model.py, the CLIP visual tower, useA.py, useB.py, DAS.py)
# ----------------------------------------------------------------------------------------------------
def encoder(sd, x, cam, heads, sie_coe=1.0):
    """The CLIP visual tower with the camera embedding added to the class token, called once per
    modality; final LayerNorm and projection on every token. -> (patch tokens, class token)."""
    p = "clip_vision_encoder.base."
    f = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    conv = f["conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = len({k.split(".")[2] for k in f if k.startswith("transformer.resblocks.")})
    x = F.conv2d(x, conv, stride=patch).flatten(2).transpose(1, 2)
    cls = f["class_embedding"] + sie_coe * sd["clip_vision_encoder.cv_embed"][cam]
    x = torch.cat([cls, x], 1) + f["positional_embedding"]
    x = F.layer_norm(x, (width,), f["ln_pre.weight"], f["ln_pre.bias"])
    x = x.permute(1, 0, 2)  # the blocks run in the sequence-first layout, as nn.MultiheadAttention expects
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), f[b + "ln_1.weight"], f[b + "ln_1.bias"])
        x = x + F.multi_head_attention_forward(h, h, h, width, heads, f[b + "attn.in_proj_weight"],
                                               f[b + "attn.in_proj_bias"], None, None, False, 0.0,
                                               f[b + "attn.out_proj.weight"], f[b + "attn.out_proj.bias"],
                                               need_weights=False)[0]
        h = F.layer_norm(x, (width,), f[b + "ln_2.weight"], f[b + "ln_2.bias"])
        h = F.linear(h, f[b + "mlp.c_fc.weight"], f[b + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, f[b + "mlp.c_proj.weight"], f[b + "mlp.c_proj.bias"])
    x = F.layer_norm(x.permute(1, 0, 2), (width,), f["ln_post.weight"], f["ln_post.bias"]) @ f["proj"]
    return x[:, 1:], x[:, 0]


def sim(sd, patches, globals_, k, heads=8):
    """SIM: per-sample loops build the intra-/inter-modal selection masks; unselected patches are zeroed
    and the three class tokens cross-attend over all 3N patches; residual + LayerNorm, FFN, residual +
    LayerNorm; concatenated."""
    lin = lambda name, t: F.linear(t, sd[f"SIM.token_selection.{name}.weight"], sd[f"SIM.token_selection.{name}.bias"])
    B, L, D = patches[0].shape
    masks = [torch.zeros(B, L) for _ in range(3)]
    for m in range(3):
        s = torch.softmax(torch.bmm(globals_[m].unsqueeze(1), patches[m].transpose(1, 2)).squeeze(1) / math.sqrt(D), 1)
        idx = s.topk(min(k, L), dim=1).indices
        for i in range(B):
            masks[m][i, idx[i]] = 1
    q = lin("W_q", torch.stack(globals_, 1))
    keys = lin("W_k", torch.cat(patches, 1))
    scores = torch.softmax(torch.bmm(q, keys.transpose(1, 2)) / math.sqrt(D), 2)
    for m in range(3):
        others = [u for u in range(3) if u != m]
        s = torch.cat([scores[:, m, u * L:(u + 1) * L] for u in others], 1)
        idx = s.topk(min(2 * k, 2 * L), dim=1).indices
        for i in range(B):
            for j in idx[i].tolist():
                masks[others[j // L]][i, j % L] = 1
    selected = torch.cat([p * mk.unsqueeze(-1) for p, mk in zip(patches, masks)], 1)
    g = torch.stack(globals_, 1)
    pre = "SIM.modal_interactive."
    attn = F.multi_head_attention_forward(
        g.transpose(0, 1), selected.transpose(0, 1), selected.transpose(0, 1), D, heads,
        sd[pre + "cross_attn.in_proj_weight"], sd[pre + "cross_attn.in_proj_bias"], None, None, False, 0.0,
        sd[pre + "cross_attn.out_proj.weight"], sd[pre + "cross_attn.out_proj.bias"], need_weights=False)[0]
    x = F.layer_norm(g + attn.transpose(0, 1), (D,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
    h = F.linear(F.gelu(F.linear(x, sd[pre + "ffn.0.weight"], sd[pre + "ffn.0.bias"])),
                 sd[pre + "ffn.2.weight"], sd[pre + "ffn.2.bias"])
    x = F.layer_norm(x + h, (D,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
    return x.flatten(1)


def gam_loss(sd, patches):
    """Cls_Align: mean patch tokens, L2-normalised; volumes from torch.det of the 3x3 Gram matrices; the
    symmetric label-smoothed cross-entropy with the learnable temperature."""
    r, n, t = (F.normalize(p.mean(1), dim=-1) for p in patches)
    B = r.shape[0]
    rr = (r * r).sum(1)[:, None].expand(-1, B)
    rn, rt = r @ n.T, r @ t.T
    nn_, nt, tt = ((a * b).sum(1)[None].expand(B, -1) for a, b in ((n, n), (n, t), (t, t)))
    G = torch.stack([torch.stack([rr, rn, rt], -1), torch.stack([rn, nn_, nt], -1), torch.stack([rt, nt, tt], -1)], -2)
    V = torch.sqrt(torch.abs(torch.det(G)))
    temp = sd["AlignM.contra_temp"]
    target = torch.arange(B)
    return (F.cross_entropy(-V / temp, target, label_smoothing=0.1)
            + F.cross_entropy(-V.T / temp, target, label_smoothing=0.1)) / 2


def das(sd, prefix, x):
    """DA_sample: offsets from proj_q -> 1x1 conv -> GELU -> depthwise conv -> GELU -> 1x1 conv (one
    channel), tanh-scaled per axis, added to the reference grid, clamped; bilinear grid_sample."""
    w = lambda n: sd[f"{prefix}.{n}"]
    B, C, H, W = x.shape
    q = F.conv2d(x, w("proj_q.weight"), w("proj_q.bias"))
    o = F.gelu(F.conv2d(q, w("conv_offset.0.weight"), w("conv_offset.0.bias")))
    k = w("conv_offset.2.weight")
    o = F.gelu(F.conv2d(o, k, w("conv_offset.2.bias"), stride=k.shape[-1], groups=C))
    o = F.conv2d(o, w("conv_offset.4.weight"))
    Hk, Wk = o.shape[2:]
    o = o.tanh() * torch.tensor([1.0 / (Hk - 1.0), 1.0 / (Wk - 1.0)]).reshape(1, 2, 1, 1) * 2
    o = o.permute(0, 2, 3, 1)
    ry, rx = torch.meshgrid(torch.linspace(0.5, Hk - 0.5, Hk), torch.linspace(0.5, Wk - 0.5, Wk), indexing="ij")
    ref = torch.stack((ry / (Hk - 1.0) * 2 - 1, rx / (Wk - 1.0) * 2 - 1), -1)[None]
    pos = (o + ref).clamp(-1.0, 1.0)
    return F.grid_sample(x, pos[..., (1, 0)], mode="bilinear", align_corners=True)


def lam_loss(sd, patches, grid):
    """patch_Align: token maps per modality, deformable sampling, mean of the three pairwise MSEs."""
    H, W = grid
    maps = [p.reshape(p.shape[0], H, W, -1).permute(0, 3, 1, 2) for p in patches]
    r, n, t = (das(sd, f"AlignM.DAS_{m}", x) for m, x in zip("rnt", maps))
    return (F.mse_loss(n, r) + F.mse_loss(t, r) + F.mse_loss(t, n)) / 3


def bn_train(sd, buffers, name, x):
    """BatchNorm1d in training mode (batch statistics; running statistics updated in ``buffers``)."""
    return F.batch_norm(x, buffers[name + ".running_mean"], buffers[name + ".running_var"], sd[name + ".weight"],
                        sd[name + ".bias"], training=True, momentum=0.1, eps=1e-5)


def training_outputs(sd, buffers, images, cams, direct, topk, grid, heads, sim_heads=8, use_sim=True, use_gam=True,
                     use_lam=True):
    """The official training forward: a list of (score, feature) pairs, then the GAM and LAM losses."""
    outs = [encoder(sd, images[m], cams, heads) for m in ("RGB", "NI", "TI")]
    patches, globals_ = [o[0] for o in outs], [o[1] for o in outs]
    pairs = []
    if direct:
        ori = torch.cat(globals_, -1)
        pairs.append((F.linear(bn_train(sd, buffers, "bottleneck", ori), sd["classifier.weight"]), ori))
    else:
        for g, m in zip(globals_, "rnt"):
            pairs.append((F.linear(bn_train(sd, buffers, f"bottleneck_{m}", g), sd[f"classifier_{m}.weight"]), g))
    if use_sim:
        v = sim(sd, patches, globals_, topk, sim_heads)
        pairs.append((F.linear(bn_train(sd, buffers, "bottleneck_var", v), sd["classifier_var.weight"]), v))
    gam = gam_loss(sd, patches) if use_gam else None
    lam = lam_loss(sd, patches, grid) if use_lam else None
    return pairs, gam, lam


def eval_features(sd, images, cams, topk, heads, sim_heads=8, use_sim=True):
    """The official evaluation forward: concat[class tokens of RGB, NI, TI, SIM feature], unnormalised (the
    evaluator normalises)."""
    outs = [encoder(sd, images[m], cams, heads) for m in ("RGB", "NI", "TI")]
    patches, globals_ = [o[0] for o in outs], [o[1] for o in outs]
    feats = [torch.cat(globals_, 1)]
    if use_sim:
        feats.append(sim(sd, patches, globals_, topk, sim_heads))
    return torch.cat(feats, 1)


# ----------------------------------------------------------------------------------------------------
# Losses (layers/make_loss.py, softmax_loss.py, triplet_loss.py; engine/processor.py)
# ----------------------------------------------------------------------------------------------------
def cross_entropy_label_smooth(score, target, eps=0.1):
    log_probs = F.log_softmax(score, 1)
    onehot = torch.zeros_like(log_probs).scatter_(1, target[:, None], 1)
    soft = (1 - eps) * onehot + eps / score.shape[1]
    return (-soft * log_probs).mean(0).sum()


def soft_triplet(feat, target):
    """Batch-hard mining on Euclidean distances, then SoftMarginLoss(d_an - d_ap, 1)."""
    N = feat.shape[0]
    sq = feat.pow(2).sum(1, keepdim=True).expand(N, N)
    dist = (sq + sq.T - 2 * feat @ feat.T).clamp(min=1e-12).sqrt()
    pos = target[:, None] == target[None]
    d_ap = dist[pos].view(N, -1).max(1).values
    d_an = dist[~pos].view(N, -1).min(1).values
    return F.soft_margin_loss(d_an - d_ap, torch.ones_like(d_an))


def loss_terms(pairs, gam, lam, target, id_w, tri_w, alpha, beta):
    """Per (score, feature) pair: (ID term, triplet term), each weighted; then alpha x GAM, beta x LAM."""
    heads = [(id_w * cross_entropy_label_smooth(s, target), tri_w * soft_triplet(f, target)) for s, f in pairs]
    return heads, (alpha * gam if gam is not None else None), (beta * lam if lam is not None else None)


# ----------------------------------------------------------------------------------------------------
# Optimizer rules and LR schedules (solver/make_optimizer.py, scheduler_factory.py, WarmupMultiStepLR)
# ----------------------------------------------------------------------------------------------------
def param_lr_wd(key, base_lr, transformer_type, dataset, bias_lr_factor=2.0, wd=1e-4, wd_bias=1e-4):
    """(lr, weight decay) the official optimizer gives the parameter named ``key``."""
    lr, decay = base_lr, wd
    if "bias" in key:
        lr, decay = base_lr * bias_lr_factor, wd_bias
    if "base" in key and "adapter" not in key:
        lr = 0.000005 if transformer_type == "ViT-B-16" else base_lr * 0.8
    if dataset == "MSVR310" and "classifier" in key:
        lr, decay = base_lr * 100, wd_bias
    return lr, decay


def lr_noise(epoch, seed=42, pct=0.67):
    """The seeded normal draw redrawn until |n| < pct; the LR is multiplied by 1 + n."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    while True:
        n = torch.randn(1, generator=g).item()
        if abs(n) < pct:
            return n


def cosine_lr(group_lr, epoch, base_lr, max_epochs, warmup, noise=True):
    """The official factory's cosine schedule: absolute warmup start 0.1 x BASE_LR, floor 0.001 x
    BASE_LR, noise in epochs [0, MAX_EPOCHS)."""
    start, floor = 0.1 * base_lr, 0.001 * base_lr
    if epoch < warmup:
        lr = start + epoch * (group_lr - start) / warmup
    elif epoch >= max_epochs:
        lr = floor
    else:
        lr = floor + 0.5 * (group_lr - floor) * (1 + math.cos(math.pi * epoch / max_epochs))
    if noise and 0 <= epoch < max_epochs:
        lr = lr * (1 + lr_noise(epoch))
    return lr


def multistep_lr(group_lr, epoch, milestones, gamma=0.1, warmup=0, warmup_factor=0.01):
    """WarmupMultiStepLR stepped with the epoch: linear warmup factor, gamma ** bisect_right(milestones, epoch)."""
    w = 1.0
    if epoch < warmup:
        alpha = epoch / warmup
        w = warmup_factor * (1 - alpha) + alpha
    return group_lr * w * gamma ** bisect.bisect_right(list(milestones), epoch)


def euclidean_distance(qf, gf):
    """The official test-time distance: squared norms expanded and summed, then addmm with alpha -2."""
    m, n = qf.shape[0], gf.shape[0]
    d = torch.pow(qf, 2).sum(dim=1, keepdim=True).expand(m, n) + torch.pow(gf, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    d.addmm_(qf, gf.t(), beta=1, alpha=-2)
    return d.cpu().numpy()


def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, q_sceneids=None, g_sceneids=None):
    """The official per-query evaluation loop (eval_func; eval_func_msrv with scene ids): NumPy's default
    argsort of the distances, gallery samples of the query's id and camera (scene) removed, CMC clipped at
    1, AP from the running precision at every position. mINP, which the official loop does not report, is
    added as the field computes it (number of true matches / rank of the last one)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp, num_valid = [], [], [], 0.0
    for i in range(num_q):
        order = indices[i]
        if q_sceneids is not None:
            remove = (g_pids[order] == q_pids[i]) & (g_sceneids[order] == q_sceneids[i])
        else:
            remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        raw = matches[i][np.invert(remove)]
        if not np.any(raw):
            continue
        cum = raw.cumsum()
        last = np.where(raw == 1)[0].max()
        all_inp.append(cum[last] / (last + 1.0))
        cmc = cum.copy()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid += 1.0
        precision = cum / (np.arange(1, cum.shape[0] + 1) * 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid
    return cmc, np.mean(all_ap), np.mean(all_inp)


# ----------------------------------------------------------------------------------------------------
# The training engine (engine/processor.py do_train, solver/make_optimizer.py)
# ----------------------------------------------------------------------------------------------------
class OfficialTraining:
    """The official model's weights (taken from one of our models, so both start equal) and the official
    optimizer: ``torch.optim.Adam`` with its default implementation and one parameter group per trainable
    tensor, LR and weight decay from ``param_lr_wd``. ``step`` is the body of the official training loop on
    the CPU, where its autocast and GradScaler are inactive: zero_grad, forward, the summed loss, backward,
    optimizer step.

    Args:
        model: a ``Signal`` model (its weights are copied in the official layout).
        cfg: the config it was built from (recipe, loss weights, TOPK, heads).
        heads: attention heads of the backbone.
    """

    # BatchNorm neck biases are frozen in the official model
    FROZEN = {"bottleneck.bias", "bottleneck_var.bias", "bottleneck_r.bias", "bottleneck_n.bias", "bottleneck_t.bias"}
    BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, model, cfg, heads):
        self.cfg = cfg
        self.heads = heads
        self.grid = model.backbone.grid
        state = {k: v.detach().clone() for k, v in official_state_dict(model, half=False).items()}
        self.params = {k: v.requires_grad_(k not in self.FROZEN and not k.endswith(self.BUFFERS))
                       for k, v in state.items()}
        self.trainable = [k for k, v in self.params.items() if v.requires_grad]
        self.rules = {k: param_lr_wd(k, cfg.SOLVER.BASE_LR, cfg.MODEL.TRANSFORMER_TYPE, cfg.DATASETS.NAMES)
                      for k in self.trainable}
        self.optimizer = torch.optim.Adam([{"params": [self.params[k]], "lr": self.rules[k][0],
                                            "weight_decay": self.rules[k][1]} for k in self.trainable])

    def loss_terms(self, batch):
        """Forward on ``batch`` (RGB/NI/TI images, pid, camid) -> (per-head (ID, triplet) terms, GAM, LAM)."""
        m = self.cfg.MODEL
        pairs, gam, lam = training_outputs(self.params, self.params, batch, batch["camid"], m.DIRECT, m.TOPK,
                                           self.grid, self.heads, sim_heads=m.SIM_HEADS, use_sim=m.USE_SIM,
                                           use_gam=m.USE_GAM, use_lam=m.USE_LAM)
        return loss_terms(pairs, gam, lam, batch["pid"], m.ID_LOSS_WEIGHT, m.TRIPLET_LOSS_WEIGHT, m.GAM_WEIGHT,
                          m.LAM_WEIGHT)

    @staticmethod
    def total(heads, gam, lam):
        return sum(a + b for a, b in heads) + sum(t for t in (gam, lam) if t is not None)

    def step(self, batch):
        """One iteration of the official loop; returns the loss."""
        self.optimizer.zero_grad()
        loss = self.total(*self.loss_terms(batch))
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def eval_features(self, images, cams):
        m = self.cfg.MODEL
        with torch.no_grad():
            return eval_features(self.params, images, cams, m.TOPK, self.heads, m.SIM_HEADS, m.USE_SIM)


# ----------------------------------------------------------------------------------------------------
# k-reciprocal re-ranking (utils/reranking.py)
# ----------------------------------------------------------------------------------------------------
def re_ranking(probFea, galFea, k1, k2, lambda_value, dtype=np.float16):
    """The re-ranking function of the official code base (Zhong et al., CVPR 2017, in the TransReID
    form): squared distances with addmm, normalised by each column's maximum; per-sample k-reciprocal sets
    with their expansion; the weight matrix V, its query expansion and the Jaccard distances stored in
    float16 (``dtype``; float64 gives the exact algorithm); an inverted index of V's columns; a per-query
    loop. Query x gallery distances."""
    query_num = probFea.shape[0]
    all_num = query_num + galFea.shape[0]
    feat = torch.cat([torch.as_tensor(probFea), torch.as_tensor(galFea)])
    sq = torch.pow(feat, 2).sum(dim=1, keepdim=True).expand(all_num, all_num)
    distmat = (sq + sq.t()).addmm_(feat, feat.t(), beta=1, alpha=-2)
    original_dist = distmat.cpu().numpy()
    original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(dtype)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    half = int(np.around(k1 / 2)) + 1
    for i in range(all_num):
        fwd = initial_rank[i, :k1 + 1]
        bwd = initial_rank[fwd, :k1 + 1]
        k_rec = fwd[np.where(bwd == i)[0]]
        expansion = k_rec
        for cand in k_rec:
            c_fwd = initial_rank[cand, :half]
            c_bwd = initial_rank[c_fwd, :half]
            c_rec = c_fwd[np.where(c_bwd == cand)[0]]
            if len(np.intersect1d(c_rec, k_rec)) > 2 / 3 * len(c_rec):
                expansion = np.append(expansion, c_rec)
        expansion = np.unique(expansion)
        weight = np.exp(-original_dist[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    original_dist = original_dist[:query_num]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=dtype)
        for i in range(all_num):
            V_qe[i] = np.mean(V[initial_rank[i, :k2]], axis=0)
        V = V_qe
    inv_index = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard = np.zeros_like(original_dist, dtype=dtype)
    for i in range(query_num):
        temp_min = np.zeros((1, all_num), dtype=dtype)
        nonzero = np.where(V[i] != 0)[0]
        for j in nonzero:
            rows = inv_index[j]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(V[i, j], V[rows, j])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original_dist * lambda_value
    return final[:, query_num:]
