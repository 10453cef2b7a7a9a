"""Image-text retrieval on a webdataset or a CSV of image,caption pairs: R@1/5/10 in both directions.

A CSV may also name a group per row (``--csv-group-key``, default column ``group`` when present, e.g.
``seen`` / ``novel``): the recalls are then also reported per group, for the queries of that group against
the whole gallery (``groups``), so the numbers of the groups and of the whole set are comparable.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from sparo_clip.errors import DataError
from sparo_clip.eval.common import EvalContext
from sparo_clip.eval.folders import ImageList
from sparo_clip.eval.similarity import SlotCache, SlotScores, split_groups
from sparo_clip.inputs import expand_urls, is_local

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
METRICS = tuple(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in KS) + ("mean_recall",)
WDS_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("retrieval data (one of --wds, --csv)")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--wds",
        metavar="SHARDS",
        default=None,
        help="webdataset shards, e.g. 'data/{0..3}.tar' (.png/.jpg + .txt)",
    )
    src.add_argument(
        "--csv", metavar="FILE", default=None, help="CSV of image paths (relative to its folder) and captions"
    )
    g.add_argument(
        "--csv-img-key", default="filepath", help="CSV column with image paths (default: filepath)"
    )
    g.add_argument("--csv-caption-key", default="title", help="CSV column with captions (default: title)")
    g.add_argument(
        "--csv-separator", default="\t", help="CSV field separator (default: tab; '\\t' is understood)"
    )
    g.add_argument(
        "--csv-group-key",
        default="group",
        help="CSV column with each pair's group, reported separately when the column exists (default: group)",
    )


@dataclass
class Pairs:
    """Captions and the image each belongs to; images are paths (CSV) or already encoded (webdataset)."""

    captions: list[str]
    text_image: list[int]
    image_paths: list[Path] | None = None
    image_slots: torch.Tensor | None = None
    image_group: list[str] | None = None


def read_csv_pairs(
    path: str | Path, img_key: str, caption_key: str, separator: str, group_key: str | None = None
) -> Pairs:
    """Rows of (image, caption[, group]); rows naming the same image give that image several captions."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--csv {path}: no such file")
    sep = codecs.decode(separator, "unicode_escape")
    if len(sep) != 1:
        raise DataError(f"--csv-separator must be one character (or an escape like '\\t'), got {separator!r}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        missing = [k for k in (img_key, caption_key) if k not in columns]
        if missing:
            raise DataError(
                f"--csv {path}: no column(s) {missing}; its columns (separator {sep!r}) are {columns}; "
                "set --csv-img-key / --csv-caption-key / --csv-separator"
            )
        grouped = group_key is not None and group_key in columns
        rows = [(row[img_key], row[caption_key], row[group_key] if grouped else None) for row in reader]
    if not rows:
        raise DataError(f"--csv {path}: no rows")
    index: dict[str, int] = {}
    captions, text_image, groups = [], [], {}
    for image, caption, group in rows:
        captions.append(caption)
        text_image.append(index.setdefault(image, len(index)))
        if grouped:
            if not group:
                raise DataError(f"--csv {path}: image {image!r} has an empty {group_key!r} column")
            if groups.setdefault(image, group) != group:
                raise DataError(
                    f"--csv {path}: image {image!r} is in two groups ({groups[image]!r}, {group!r})"
                )
    paths = [(path.parent / p) for p in index]
    missing_files = [str(p) for p in paths if not p.is_file()]
    if missing_files:
        raise DataError(
            f"--csv {path}: {len(missing_files)} image file(s) not found, e.g. {missing_files[:3]}"
        )
    image_group = [groups[p] for p in index] if grouped else None
    return Pairs(captions, text_image, image_paths=paths, image_group=image_group)


def wds_urls(pattern: str) -> list[str]:
    """Expand ``{a..b}`` shard patterns and check that local shards exist."""
    urls = expand_urls(pattern)
    local = [u for u in urls if is_local(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise DataError(
            f"--wds {pattern}: {len(missing)} of {len(urls)} shard(s) not found, e.g. {missing[:3]}"
        )
    return urls


class _WdsPairs(IterableDataset):
    """(image tensor, caption text) from webdataset shards, with clear errors for incomplete samples."""

    def __init__(self, urls: list[str], transform: Callable) -> None:
        self.urls, self.transform = urls, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        import webdataset as wds

        # one process reads every shard (split among its loader workers), whatever RANK/WORLD_SIZE say
        for sample in wds.WebDataset(self.urls, shardshuffle=False, nodesplitter=_every_shard):
            where = f"sample {sample.get('__key__')!r} in {sample.get('__url__')}"
            image_key = next((k for k in WDS_IMAGE_KEYS if k in sample), None)
            if image_key is None:
                raise DataError(
                    f"--wds: {where} has no image (allowed: {', '.join('.' + k for k in WDS_IMAGE_KEYS)})"
                )
            if "txt" not in sample:
                raise DataError(f"--wds: {where} has no .txt caption")
            text = sample["txt"].decode("utf-8")
            if not text.strip():
                raise DataError(f"--wds: {where} has an empty .txt caption")
            with Image.open(io.BytesIO(sample[image_key])) as img:
                yield self.transform(img.convert("RGB")), text


def _every_shard(urls: Iterator[str]) -> Iterator[str]:
    yield from urls


def read_wds_pairs(ctx: EvalContext, urls: list[str]) -> Pairs:
    """Encode every sample's image; each line of its ``.txt`` is one caption of that image."""
    loader = DataLoader(_WdsPairs(urls, ctx.preprocess), batch_size=ctx.batch_size, num_workers=ctx.workers)
    chunks, captions, text_image = [], [], []
    num_images = 0
    for images, texts in tqdm(loader, desc="encoding wds images", unit="batch"):
        for text in texts:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            captions += lines
            text_image += [num_images] * len(lines)
            num_images += 1
        chunks.append(ctx.image_slots(images))
    if not chunks:
        raise DataError(f"--wds: the shards {urls[:3]} hold no samples")
    return Pairs(captions, text_image, image_slots=torch.cat(chunks))


def ranks(sim: torch.Tensor, text_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each image's best own caption (N_images,) and of each caption's image (N_texts,).

    Rank = the number of wrong candidates scoring strictly higher.
    """
    text_image = text_image.to(sim.device)
    num_images, num_texts = sim.shape
    positive = text_image[None, :] == torch.arange(num_images, device=sim.device)[:, None]  # (N_img, N_txt)
    best = sim.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values  # best own caption
    i2t_rank = ((sim > best) & ~positive).sum(dim=1)
    own = sim[text_image, torch.arange(num_texts, device=sim.device)]  # (N_txt,)
    t2i_rank = (sim > own[None, :]).sum(dim=0)
    return i2t_rank, t2i_rank


def recalls_from_ranks(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor) -> dict[str, float]:
    """R@k both ways and their mean from per-query ranks."""
    out = {}
    for name, rank in (("image_to_text", i2t_rank), ("text_to_image", t2i_rank)):
        for k in KS:
            out[f"{name}_R@{k}"] = int((rank < k).sum()) / max(1, len(rank))
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def recall_metrics(sim: torch.Tensor, text_image: torch.Tensor) -> dict[str, float]:
    """R@k both ways from similarities (N_images, N_texts); ``text_image[t]`` is caption t's image.

    image->text: an image scores at k when one of its captions ranks in the top k of all captions.
    text->image: a caption scores at k when its image ranks in the top k of all images.
    Rank = the number of wrong candidates scoring strictly higher.
    """
    return recalls_from_ranks(*ranks(sim, text_image))


@dataclass
class RetrievalCache(SlotCache):
    """Encoded images (N, L, V), captions (M, L, V) and each caption's image index (M,)."""

    images: torch.Tensor
    texts: torch.Tensor
    text_image: torch.Tensor
    name: str = "retrieval"
    image_group: torch.Tensor | None = None
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.scores = SlotScores(self.images, self.texts)

    def metrics(self, mask: torch.Tensor | None = None) -> dict[str, object]:
        i2t, t2i = ranks(self.scores(mask), self.text_image)
        out: dict[str, object] = dict(recalls_from_ranks(i2t, t2i))
        out |= {"num_images": self.images.shape[0], "num_texts": self.texts.shape[0]}
        if self.image_group is not None:  # queries of each group against the whole gallery
            img_group = self.image_group.to(i2t.device)
            txt_group = img_group[self.text_image.to(i2t.device)]
            out["groups"] = {
                name: recalls_from_ranks(i2t[img_group == g], t2i[txt_group == g])
                | {"num_images": int((img_group == g).sum()), "num_texts": int((txt_group == g).sum())}
                for g, name in enumerate(self.groups)
            }
        return out

    def items(self, mask: torch.Tensor | None = None) -> dict[str, object]:
        """Per query: its rank (image->text per image, text->image per caption) and group (for resampling)."""
        i2t, t2i = ranks(self.scores(mask), self.text_image)
        out: dict[str, object] = {
            "i2t_rank": i2t.cpu(),
            "t2i_rank": t2i.cpu(),
            "text_image": self.text_image.cpu(),
        }
        if self.image_group is not None:
            out |= {"image_group": self.image_group.cpu(), "groups": list(self.groups)}
        return out

    def subset(self, image_index: torch.Tensor) -> RetrievalCache:
        """Keep these images and their captions."""
        new_id = torch.full((self.images.shape[0],), -1, dtype=torch.long)
        new_id[image_index] = torch.arange(len(image_index))
        keep = new_id[self.text_image.cpu()] >= 0
        return RetrievalCache(
            self.images[image_index],
            self.texts[keep],
            new_id[self.text_image.cpu()][keep],
            self.name,
            None if self.image_group is None else self.image_group[image_index],
            self.groups,
        )

    def split(self, val_fraction: float, seed: int) -> tuple[RetrievalCache, RetrievalCache]:
        """Split by image (captions follow their image)."""
        groups = torch.zeros(self.images.shape[0], dtype=torch.long)
        val, test = split_groups(groups, val_fraction, seed, self.name)
        return self.subset(val), self.subset(test)


def prepare(args: argparse.Namespace) -> Pairs | list[str]:
    """CSV: the checked pairs; webdataset: the checked shard list (its samples are read while encoding)."""
    if args.csv is not None:
        return read_csv_pairs(
            args.csv, args.csv_img_key, args.csv_caption_key, args.csv_separator, args.csv_group_key
        )
    if args.wds is not None:
        return wds_urls(args.wds)
    raise DataError("no data: give --wds SHARDS or --csv FILE")


def set_data_path(args: argparse.Namespace, path: str) -> argparse.Namespace:
    """A copy of ``args`` reading ``path`` in the same format (CSV or webdataset)."""
    return argparse.Namespace(**(vars(args) | {("csv" if args.csv is not None else "wds"): path}))


def encode(ctx: EvalContext, data: Pairs | list[str]) -> dict[str, RetrievalCache]:
    """Encode images and captions."""
    if isinstance(data, Pairs):
        images = ctx.encode_dataset(ImageList(data.image_paths, ctx.preprocess), desc="encoding csv images")
        pairs = data
    else:
        pairs = read_wds_pairs(ctx, data)
        images = pairs.image_slots
    texts = ctx.encode_texts(pairs.captions, desc="encoding captions")
    logger.info("retrieval: %d images, %d captions", images.shape[0], texts.shape[0])
    group, names = None, ()
    if pairs.image_group is not None:
        names = tuple(sorted(set(pairs.image_group)))
        group = torch.tensor([names.index(g) for g in pairs.image_group])
    return {
        "retrieval": RetrievalCache(images, texts, torch.tensor(pairs.text_image), "retrieval", group, names)
    }
