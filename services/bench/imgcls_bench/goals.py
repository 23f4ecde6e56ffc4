"""The targets the bench reports against, in one place (the issues that set them; the measured
figures are in the README and docs/performance.md, never here)."""

OVERHEAD_MS = 1.5  # serving overhead per image at c16 on the served model (CPU ms)
RSS_GROWTH = 1.25  # prepare's peak RSS for 4× the images, at most this many times
CORES_SPEEDUP = 1.7  # prepare on every core against one core, at least
EXPORT_LIMIT_MB = 3 * 1024  # the export's peak RSS (process tree) at 224²
FASTEST_OVER_FP32 = 7.0  # the fastest variant through the API over FP32's, 224², c16
VARIANT_OVER_CEILING = 0.7  # the fastest variant against its decode + in-process ceiling
PEER_RATIO = 1.2  # the API over the best peer on the same runtime
