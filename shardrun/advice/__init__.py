"""`shardrun advise`: the source paper's roadmap as arithmetic (pure) and the shell that gathers
a job's inputs for it.
"""
