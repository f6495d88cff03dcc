"""The interpretability study of a trained run: the manual's "6-step interpretability pipeline" plus
activation patching (step 7).

Each step is one module in this package with `NAME` (its folder under runs/<RUN_ID>/analysis/) and
`run(ctx: AnalysisContext) -> dict` (headline numbers, also written as the step's summary.json).
Every measure is reported for the trained model AND a randomly initialised model of the same shape
(`ctx.random_model`), so a reader can tell what was learned from what the architecture gives.
Adding a step means adding one module and its name to STEPS.
"""

STEPS = (
    "summary",
    "probe_next_token",
    "probe_linear",
    "analyze_embeddings",
    "analyze_attention",
    "analyze_saliency",
    "analyze_patching",
)
