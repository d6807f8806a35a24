"""Names of the files stages hand to each other: the contracts between stages, in one place,
so a stage can read another's output without importing its code."""

BASE_LOCK = "base.lock.json"          # artifacts/base/: sha256 + size of every 16-bit base file
QUANTIZE_REPORT = "quantize.json"     # artifacts/base_q/: bnb config, measured bits, file hashes
CURATED_META = "meta.json"            # data/curated/: shipped context length, data digest
TRAINING_META = "training.json"       # artifacts/adapter/: base digest, data digest, versions
MANIFEST = "manifest.json"            # artifacts/bundle/: the bundle manifest
