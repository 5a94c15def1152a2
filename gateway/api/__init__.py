"""The gateway's HTTP faces: the management API (:8813) and the generation API (:8812)."""
