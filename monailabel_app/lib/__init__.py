"""MU-Diff MONAI Label app components (MONAI Label imports the app's ``lib`` package from the app folder)."""
