"""Instruction tuning of checkpoint-suite members (Section 2), on transformers' own models.

A suite member (``core.suite``: a transformers directory or a hub revision, its pre-training tokens
known) is tuned here and evaluated elsewhere, one way through the layers:

    core.suite          resolve and check a member, its provenance file
    data.chat           chat records, rendered with the member's (or TULU's) template
    finetune.instruct   sft: supervised fine-tuning on chat data (``overtrain sft``);
                        multimodal: LLaVA two-stage tuning + visual QA (``overtrain multimodal``)
    evaluate            lm-eval / generalist tasks on the tuned member (``overtrain lm-eval``)
    evaluate.report     the suite's curves and verdict (``report.suite_part``)

Both commands train on the one loop (``train.trainer.Trainer``) and append results rows
(``core.rows``); the grid runs them as its ``sft:`` and ``multimodal:`` stages.
"""
