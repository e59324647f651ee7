# Copyright 2026 The hf-earlyexit Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""BibTeX of the papers whose methods hf_earlyexit implements, in one place: model cards and training losses cite
from here."""

CITATIONS: dict[str, str] = {
    "badge": """@inproceedings{zhu-etal-2023-badge,
  title = "{BADGE}: Speeding Up {BERT} Inference after Deployment via Block-wise Bypasses and Divergence-based Early Exiting",
  author = "Zhu, Wei and Wang, Peng and Ni, Yuan and Xie, Guotong and Wang, Xiaoling",
  booktitle = "Proceedings of the 61st Annual Meeting of the Association for Computational Linguistics (Volume 5: Industry Track)",
  year = "2023",
  address = "Toronto, Canada",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2023.acl-industry.48",
  doi = "10.18653/v1/2023.acl-industry.48",
  pages = "500--509"
}""",
    "pabee": """@inproceedings{zhou-etal-2020-bert-loses-patience,
  title = "{BERT} Loses Patience: Fast and Robust Inference with Early Exit",
  author = "Zhou, Wangchunshu and Xu, Canwen and Ge, Tao and McAuley, Julian and Xu, Ke and Wei, Furu",
  booktitle = "Advances in Neural Information Processing Systems",
  volume = "33",
  year = "2020",
  url = "https://arxiv.org/abs/2006.04152"
}""",
    "deebert": """@inproceedings{xin-etal-2020-deebert,
  title = "{D}ee{BERT}: Dynamic Early Exiting for Accelerating {BERT} Inference",
  author = "Xin, Ji and Tang, Raphael and Lee, Jaejun and Yu, Yaoliang and Lin, Jimmy",
  booktitle = "Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics",
  year = "2020",
  address = "Online",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2020.acl-main.204",
  doi = "10.18653/v1/2020.acl-main.204",
  pages = "2246--2251"
}""",
    "cascadebert": """@inproceedings{li-etal-2021-cascadebert,
  title = "{C}ascade{BERT}: Accelerating Inference of Pre-trained Language Models via Calibrated Complete Models Cascade",
  author = "Li, Lei and Lin, Yankai and Chen, Deli and Ren, Shuhuai and Li, Peng and Zhou, Jie and Sun, Xu",
  booktitle = "Findings of the Association for Computational Linguistics: EMNLP 2021",
  year = "2021",
  address = "Punta Cana, Dominican Republic",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2021.findings-emnlp.43",
  doi = "10.18653/v1/2021.findings-emnlp.43",
  pages = "475--486"
}""",
    "sentee_tokee": """@inproceedings{li-etal-2021-accelerating,
  title = "Accelerating {BERT} Inference for Sequence Labeling via Early-Exit",
  author = "Li, Xiaonan and Shao, Yunfan and Sun, Tianxiang and Yan, Hang and Qiu, Xipeng and Huang, Xuanjing",
  booktitle = "Proceedings of the 59th Annual Meeting of the Association for Computational Linguistics and the 11th International Joint Conference on Natural Language Processing (Volume 1: Long Papers)",
  year = "2021",
  address = "Online",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2021.acl-long.16",
  doi = "10.18653/v1/2021.acl-long.16"
}""",
    "berxit": """@inproceedings{xin-etal-2021-berxit,
  title = "{BER}xi{T}: Early Exiting for {BERT} with Better Fine-Tuning and Extension to Regression",
  author = "Xin, Ji and Tang, Raphael and Yu, Yaoliang and Lin, Jimmy",
  booktitle = "Proceedings of the 16th Conference of the European Chapter of the Association for Computational Linguistics: Main Volume",
  year = "2021",
  address = "Online",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2021.eacl-main.8",
  pages = "91--104"
}""",
    "fastbert": """@inproceedings{liu-etal-2020-fastbert,
  title = "{F}ast{BERT}: a Self-distilling {BERT} with Adaptive Inference Time",
  author = "Liu, Weijie and Zhou, Peng and Wang, Zhiruo and Zhao, Zhe and Deng, Haotang and Ju, Qi",
  booktitle = "Proceedings of the 58th Annual Meeting of the Association for Computational Linguistics",
  year = "2020",
  address = "Online",
  publisher = "Association for Computational Linguistics",
  url = "https://aclanthology.org/2020.acl-main.537",
  pages = "6035--6044"
}""",
    "distillation": """@article{hinton-etal-2015-distilling,
  title = "Distilling the Knowledge in a Neural Network",
  author = "Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff",
  journal = "arXiv preprint arXiv:1503.02531",
  year = "2015",
  url = "https://arxiv.org/abs/1503.02531"
}""",
}


__all__ = ["CITATIONS"]
