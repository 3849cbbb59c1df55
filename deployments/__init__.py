"""The Ray Serve application: `serve run deployments.app:build_app artifacts=DIR`."""
