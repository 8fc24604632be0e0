"""MU-Diff bundle components: data pipeline, networks, diffusion, training, evaluation."""
