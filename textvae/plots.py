"""Pictures of a run: its training curves and a 2-D map of its latent space.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, so no
window and no global state) and returned as PNG bytes; callers write them atomically.
"""
import io

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import UserError

# Fonts with CJK glyphs, most common first; matplotlib's default (DejaVu) has none and
# would draw every Chinese character as a box.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC",
             "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei",
             "PingFang SC", "Heiti SC", "Arial Unicode MS")


def cjk_font():
    """The first installed font of CJK_FONTS, or None."""
    from matplotlib import font_manager
    have = {f.name for f in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in have), None)


def png(fig, dpi=110):
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Training curves

def curves(records, beta, summary=None, title=""):
    """PNG of a run's metrics.jsonl records: reconstruction, KL with the KL weight beta
    (a function of the step), and -ELBO against step (train: mean over the steps since
    the record before; valid: the validation split), with the test IW-NLL of
    summary.json as a line if given."""
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    rec, kl, nelbo = fig.subplots(1, 3)
    for ax, key, name in ((rec, "rec", "reconstruction"), (kl, "kl", "KL"),
                          (nelbo, "nelbo", "-ELBO")):
        for split, style in (("train", "-"), ("valid", "o-")):
            ys = [r.get(f"{split}_{key}") for r in records]
            if any(y is not None for y in ys):
                ax.plot(*_present(steps, ys), style, label=split, markersize=3)
        ax.set(title=f"{name} (nats/line)", xlabel="step")
        ax.grid(alpha=0.3)
    every = range(0, max(steps, default=0) + 1)
    twin = kl.twinx()
    twin.plot(every, [beta(s) for s in every], color="grey", alpha=0.5, linewidth=1)
    twin.set_ylabel("beta (KL weight)", color="grey")
    if summary and summary.get("iw_nll") is not None:
        nelbo.axhline(summary["iw_nll"], color="black", linestyle="--",
                      label=f"test IW-NLL k={summary['iw_samples']}")
    for ax in (rec, kl, nelbo):
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return png(fig)


def _present(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


# ---------------------------------------------------------------------------------------
# An evaluation (generate.py evaluate --plot)

def evaluation(res, title=""):
    """PNG of evaluate's results: KL of each latent dimension (which ones the model
    uses), and the sample figures beside the same figures for real lines."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    kl, bits, shares = fig.subplots(1, 3, width_ratios=(2, 1, 1.4))
    per_dim = sorted(res.get("kl_per_dim", []), reverse=True)
    kl.bar(range(len(per_dim)), per_dim, color="tab:blue")
    kl.set(title=f"KL per latent dimension, sorted (total {res['kl']:.1f} nats; "
                 f"{res['au']} active)", xlabel="dimension (by KL)", ylabel="nats")
    _paired(bits, res, [("kn_bits", "fluency"), ("reverse_kn_bits", "reverse")],
            "KN-3 bits/char (higher is better)")
    _paired(shares, res, [("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                          ("adjacent_repeat", "adj. repeat")], "shares")
    fig.suptitle(title)
    return png(fig)


def _paired(ax, res, keys, title):
    """Grouped bars: samples against real lines for each (key, label) present in res."""
    keys = [(k, name) for k, name in keys if k in res]
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [res[k] for k, _ in keys], 0.4, label="samples")
    ax.bar([x + 0.2 for x in xs], [res[f"{k}_real"] for k, _ in keys], 0.4, label="real lines")
    ax.set_xticks(list(xs), [name for _, name in keys])
    ax.set_title(title)
    ax.legend(fontsize=8)


# ---------------------------------------------------------------------------------------
# The latent map

BACKGROUND = ("no season", "unknown")
SEASONS = {"春": "spring", "夏": "summer", "秋": "autumn", "冬": "winter"}


def season_of(line):
    return next((name for ch, name in SEASONS.items() if ch in line), "no season")


def tone_of_last(line, tab):
    """'ping' (平) or 'ze' (仄) by the last character's readings in a rhyme table; 'both'
    for a character read either way, 'unknown' for one the table lacks."""
    from .prosody import PING
    tones = tab.tones(line.rstrip()[-1:]) if line.strip() else set()
    if len(tones) == 1:
        return "ping" if PING in tones else "ze"
    return "both" if tones else "unknown"


def project(mu, how="pca"):
    """(N, D) -> (N, 2): the top two principal components, or UMAP if installed."""
    if how == "umap":
        try:
            import umap
        except ImportError:
            raise UserError("--projection umap needs umap-learn (pip install umap-learn); "
                            "--projection pca needs nothing") from None
        return torch.from_numpy(umap.UMAP(random_state=0).fit_transform(mu.numpy()))
    centred = mu - mu.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def latent_map(mu, lines, labels, n_text=12, title=""):
    """PNG: each line's mu projected to 2-D (``project``), coloured by its label, with
    ``n_text`` lines spread over the picture written beside their points."""
    xy = project(mu) if mu.shape[1] > 2 else mu
    fig = Figure(figsize=(9, 8))
    ax = fig.subplots()
    # The catch-all class goes first, in grey, so the classes that say something are
    # drawn over it.
    for name in sorted(set(labels), key=lambda s: (s not in BACKGROUND, s)):
        pick = torch.tensor([lab == name for lab in labels])
        look = {"color": "lightgrey"} if name in BACKGROUND else {"s": 10}
        ax.scatter(xy[pick, 0], xy[pick, 1], **{"s": 5, "alpha": 0.7, **look},
                   label=f"{name} ({int(pick.sum())})")
    font = cjk_font()
    for i in spread(xy, n_text) if font else []:
        ax.annotate(lines[i], xy[i].tolist(), fontsize=9, fontfamily=font,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(title=title, xlabel="component 1", ylabel="component 2")
    ax.legend(markerscale=3, fontsize=8)
    return png(fig)


def spread(xy, n):
    """n points far from each other (greedy farthest-point), so labels do not pile up."""
    if len(xy) == 0 or n < 1:
        return []
    chosen = [int((xy - xy.mean(0)).norm(dim=1).argmin())]
    dist = (xy - xy[chosen[0]]).norm(dim=1)
    while len(chosen) < min(n, len(xy)):
        chosen.append(int(dist.argmax()))
        dist = torch.minimum(dist, (xy - xy[chosen[-1]]).norm(dim=1))
    return chosen
