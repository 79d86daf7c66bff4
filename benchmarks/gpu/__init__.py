"""What a lent GPU runs (gpu_check.sh and the scripts it calls) and the targets its results are judged by."""
