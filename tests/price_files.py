"""A small valid price file that tests break one entry at a time."""

MINIMAL = """
[free]
platforms = ["colab-free"]
default = "colab-free"
quota_gb = 15
quota_source = "https://support.google.com/drive/answer/6374270"

[speed]
reference = "K80"

[gpus.K80]
match = ["K80"]
basis = "reference"
speed = { default = 1.0 }
fp32_tflops = 4.113
source = "paper"

[gpus.V100]
match = ["V100"]
basis = "estimate"
fp32_tflops = 15.67
source = "datasheet"

[[rent]]
provider = "Google"
gpu = "K80"
usd_per_hour = 0.135
date = "2019"
source = "Temiz, Bilge, Uygur 2019, Table 3"

[[rent]]
provider = "Amazon"
gpu = "V100"
usd_per_hour = 1.99
date = "2019"
source = "Temiz, Bilge, Uygur 2019, Table 3"
"""
