"""Specialist models on HMM states: a generalist plus specialists for confusable pdf sets.

Hinton, Vinyals & Dean (2015), section 5, applied to tied triphone states (pdfs). A generalist
(any DNN checkpoint) is joined by K specialists, each trained on a set of pdfs the generalist
confuses; on a frame, the specialists its top pdfs make active and the generalist are combined
into one distribution.

- ``sets``: the confusable sets, bounded subsets grown greedily on the generalist's confusion
  matrix (or k-means on the covariance of its predicted distributions);
- ``train``: one specialist per set (``train_specialists``, `asrkd train-specialists`): a copy
  of the generalist with outputs over the set plus a dustbin, trained on the set's frames and as
  many others, on hard labels (5.2) or mixed with the ensemble's soft targets (6.1);
- ``combine``: the dustbin's correction and the KL combination of generalist and specialists;
- ``scorer``: a specialists dir as one MODEL for `asrkd decode` (``make_scorer``);
- ``report``: gain with paired intervals, coverage, training and costs (``specialist_report``,
  `asrkd specialist-report`).

Where we deviate from the paper (each module says more): sets from the confusion matrix by
greedy growth (sets); early stopping on the combination with the generalist (train); the gradient
descent of the combination starts from one EM step (combine).
"""
