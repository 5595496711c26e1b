"""The CLI verbs (`smartbrush <verb>`): argument parsing, job wiring, finalize."""
