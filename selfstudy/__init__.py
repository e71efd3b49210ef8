"""selfstudy: measure how much self-supervised pretraining helps a downstream task."""
