"""The pool's services: instances (control plane), the instance client, and later the dispatcher."""
