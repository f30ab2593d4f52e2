"""`workbench zeroshot`: zero-shot evaluation of a backbone on a dataset."""
from __future__ import annotations

import json


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("zeroshot", help="zero-shot top-1 (and base/new/HM) of a backbone on a dataset")
    p.add_argument("--dataset", default="toy_objects")
    p.add_argument("--root", default=None, help="data root (default: the manifest's, e.g. the toy data root)")
    p.add_argument("--backbone", default="toy", help="'toy' (embedded default) or an open_clip model name")
    p.add_argument("--pretrained", default=None, help="pretrained tag or weights file (e.g. openai)")
    p.add_argument("--device", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--base-to-novel", action="store_true", help="report base, new and HM")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_zeroshot)


def _cmd_zeroshot(args) -> int:
    from ..data import load_dataset
    from ..models import default_device, load_backbone
    from .features import FeatureCache
    from .zeroshot import base_to_novel_zero_shot, evaluate_zero_shot

    backbone = load_backbone(args.backbone, args.pretrained, device=args.device or default_device())
    ds = load_dataset(args.dataset, root=args.root)
    cache = FeatureCache(enabled=not args.no_cache)
    if args.base_to_novel:
        r = base_to_novel_zero_shot(backbone, ds, cache=cache)
        result = {"dataset": ds.name, "base": r["base"].top1, "new": r["new"].top1, "hm": r["hm"],
                  "base_classes": len(r["base"].classnames), "new_classes": len(r["new"].classnames)}
    else:
        r = evaluate_zero_shot(backbone, ds, args.split, cache=cache)
        result = {"dataset": ds.name, "split": args.split, "top1": r.top1, "classes": len(r.classnames),
                  "skipped_images": r.skipped}
    if args.json:
        print(json.dumps(result))
    else:
        print("  ".join(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()))
    return 0
