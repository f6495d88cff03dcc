"""Stage 2: sequence-level classifiers on top of a trained codon LM (the manual's "Stage-2 Classifiers").

    sequences (FASTA/CSV) --embeddings.py--> NPZ of pooled hidden states (one vector per gene)
    sequences             --kmer.py-------> k-mer frequency vectors (the baselines)
    labels CSV + features --train.py------> probes (logreg, SVM, MLP) and k-mer models (logreg, SVM, xgboost)
                                            on one seeded split -> metrics.json, confusion.png, calibration.png,
                                            compare.csv/png, models (skops / xgboost JSON)
    a run                 --tasks.py------> the ready tasks' labelled genes (held-out genes only)
    a run                 --pipeline.py---> every ready config of configs/classifier/ -> stage2/summary.json

Nothing here unpickles: sklearn models are skops files loaded with an explicit list of trusted types,
xgboost models are its JSON format, embeddings are NPZ read with allow_pickle=False.
"""
