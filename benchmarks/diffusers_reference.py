"""diffusers' own training scripts' step loops, reproduced line by line for ``bench_peers.py``.

The scripts (diffusers ``examples/``, at tag v0.40.0, the newest release in the snapshot this was written from;
the project pins diffusers 0.42.*: between v0.39.0, v0.40.0 and the snapshot's main branch the four scripts differ
only in their ``check_min_version`` line):

  ti                 examples/textual_inversion/textual_inversion.py
  lora               examples/dreambooth/train_dreambooth_lora.py
  custom-diffusion   examples/custom_diffusion/train_custom_diffusion.py
  dreambooth         examples/dreambooth/train_dreambooth.py

They import torchvision (their datasets' transforms), which does not install beside our torch, so the parts of
them a training step runs are copied here, each cited ``file:line``, with torchvision's transforms written with
PIL and numpy (same operations: ``Resize`` of the shorter side, ``RandomCrop``/``CenterCrop``, ``ToTensor``,
``Normalize([0.5], [0.5])``, ``RandomHorizontalFlip``). Each script's default flags are kept except those the
benchmark sets on both sides alike (DEVIATIONS lists every difference).

``Reference(method, pipe, images, batch, resolution)``: the script's setup on ``pipe`` (models built from configs, see
``bench_peers.py``); ``next_batch()`` (its DataLoader: files read, transformed, tokenized, collated),
``prepare(batch)`` (VAE encoding, noise, timesteps, noisy latents; frozen text encoders' states) and ``core(prep)``
(trainable text encoder, UNet, loss, backward, gradient clipping, optimizer and lr-scheduler step, zero_grad, and
the scripts' per-step fix-ups) -> loss.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.ImageOps import exif_transpose

TI = "examples/textual_inversion/textual_inversion.py"
LORA = "examples/dreambooth/train_dreambooth_lora.py"
CD = "examples/custom_diffusion/train_custom_diffusion.py"
DB = "examples/dreambooth/train_dreambooth.py"
SCRIPTS = {"ti": TI, "lora": LORA, "custom-diffusion": CD, "dreambooth": DB}

DEVIATIONS = [
    ("models: SD1.5's configs with random weights on both sides (bench_peers --model sd15-full: UNet, VAE, 12-layer "
     "CLIP ViT-L/14 text encoder; --model sd15: a 1-layer text encoder and a small VAE), instead of from_pretrained of "
     "a hub model (offline)"),
    ("torchvision transforms (Resize, RandomCrop/CenterCrop, ToTensor, Normalize, RandomHorizontalFlip) written with "
     "PIL/numpy/torch: the same operations"),
    ("flags set alike on both sides instead of each script's default: --train_batch_size (the benchmark's batch), "
     "--resolution (the benchmark's), --mixed_precision no, prior preservation off (no class images; ours: "
     "prior_loss_weight=0), no validation, no checkpoint saving, no logging tracker; learning rates are each side's "
     "default (they do not change time)"),
    ("the DataLoader is not passed through accelerator.prepare (one process: the same batches); the models and the "
     "optimizer are, as in the scripts"),
    "the TI and Custom Diffusion references add their placeholder token (<mycat>, <new1>) to their own pipeline's tokenizer",
    "the timed loop is each script's step body; its progress-bar update is left out, its loss.detach().item() kept",
    ("ours does not clip gradients; the scripts clip at --max_grad_norm 1.0 in lora, custom-diffusion and dreambooth "
     "(not in ti): the clip is timed as part of their core"),
    ("dreambooth: each side in its own process, one after the other (two AdamW over 860 M parameters do not fit in "
     "one 23 GB machine), so its ratio is not interleaved"),
]


# --- torchvision's transforms, as used by the scripts' datasets ---------------------------------------------------
def tv_resize(im: Image.Image, size: int, resample) -> Image.Image:
    """transforms.Resize(size): the shorter side to ``size``, the longer in proportion (torchvision's int())."""
    w, h = im.size
    if w <= h:
        return im.resize((size, int(size * h / w)), resample)
    return im.resize((int(size * w / h), size), resample)


def tv_random_crop(im: Image.Image, size: int) -> Image.Image:
    """transforms.RandomCrop(size) (torch's RNG, as torchvision)."""
    w, h = im.size
    top = int(torch.randint(0, h - size + 1, size=(1,)))
    left = int(torch.randint(0, w - size + 1, size=(1,)))
    return im.crop((left, top, left + size, top + size))


def tv_flip(im: Image.Image, p: float) -> Image.Image:
    """transforms.RandomHorizontalFlip(p)."""
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1) < p else im


def tv_to_normalized_tensor(im: Image.Image) -> torch.Tensor:
    """transforms.ToTensor() then Normalize([0.5], [0.5]) -> (3, H, W) in [-1, 1]."""
    a = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (a - 0.5) / 0.5


# --- the scripts' datasets -------------------------------------------------------------------------------------------
IMAGENET_TEMPLATES_SMALL = [  # textual_inversion.py:444-471 (imagenet_templates_small)
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]


class TextualInversionDataset(torch.utils.data.Dataset):
    """textual_inversion.py:507-591 (learnable_property object, repeats 100, bicubic, flip_p 0.5, no center crop)."""

    def __init__(self, data_root, tokenizer, size, placeholder_token, repeats=100, flip_p=0.5):
        self.image_paths = sorted(Path(data_root).iterdir())  # :529 (os.listdir order; sorted here)
        self.tokenizer, self.size, self.placeholder_token, self.flip_p = tokenizer, size, placeholder_token, flip_p
        self._length = len(self.image_paths) * repeats  # :534-535

    def __len__(self):
        return self._length

    def __getitem__(self, i):  # :550-591
        example = {}
        image = Image.open(self.image_paths[i % len(self.image_paths)])
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = random.choice(IMAGENET_TEMPLATES_SMALL).format(self.placeholder_token)
        example["input_ids"] = self.tokenizer(text, padding="max_length", truncation=True,
                                              max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids[0]
        img = np.array(image).astype(np.uint8)
        image = Image.fromarray(img)
        image = image.resize((self.size, self.size), resample=Image.Resampling.BICUBIC)  # :582 (PIL_INTERPOLATION)
        image = tv_flip(image, self.flip_p)  # :584
        image = np.array(image).astype(np.uint8)
        image = (image / 127.5 - 1.0).astype(np.float32)
        example["pixel_values"] = torch.from_numpy(image).permute(2, 0, 1)
        return example


class DreamBoothDataset(torch.utils.data.Dataset):
    """train_dreambooth_lora.py:572-672 / train_dreambooth.py:611-708, without class images (prior off): Resize
    (lanczos in the LoRA script, its --image_interpolation_mode default; bilinear in train_dreambooth.py:662),
    RandomCrop (no --center_crop), ToTensor, Normalize; the instance prompt tokenized every item."""

    def __init__(self, data_root, prompt, tokenizer, size, resample):
        self.paths = sorted(Path(data_root).iterdir())
        self.prompt, self.tokenizer, self.size, self.resample = prompt, tokenizer, size, resample

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        example = {}
        im = exif_transpose(Image.open(self.paths[index % len(self.paths)]))  # lora :637-642
        if im.mode != "RGB":
            im = im.convert("RGB")
        example["instance_images"] = tv_to_normalized_tensor(tv_random_crop(tv_resize(im, self.size, self.resample),
                                                                            self.size))
        text = self.tokenizer(self.prompt, truncation=True, padding="max_length",  # tokenize_prompt, lora :725-739
                              max_length=self.tokenizer.model_max_length, return_tensors="pt")
        example["instance_prompt_ids"] = text.input_ids
        example["instance_attention_mask"] = text.attention_mask
        return example


def dreambooth_collate(examples):
    """collate_fn, train_dreambooth_lora.py:675-708 (no prior preservation)."""
    input_ids = [e["instance_prompt_ids"] for e in examples]
    pixel_values = torch.stack([e["instance_images"] for e in examples])
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    return {"input_ids": torch.cat(input_ids, dim=0), "pixel_values": pixel_values,
            "attention_mask": [e["instance_attention_mask"] for e in examples]}


class CustomDiffusionDataset(torch.utils.data.Dataset):
    """train_custom_diffusion.py:172-303: resize augmentation with its valid-region mask (aug on: no --noaug), no
    flip (no --hflip), no class images."""

    def __init__(self, data_root, prompt, tokenizer, size, mask_size):
        self.paths = [(p, prompt) for p in sorted(Path(data_root).iterdir())]
        random.shuffle(self.paths)  # :221
        self.tokenizer, self.size, self.mask_size = tokenizer, size, mask_size

    def __len__(self):
        return len(self.paths)

    def preprocess(self, image, scale, resample):  # :239-258
        outer, inner = self.size, scale
        factor = self.size // self.mask_size
        if scale > self.size:
            outer, inner = scale, self.size
        top, left = np.random.randint(0, outer - inner + 1), np.random.randint(0, outer - inner + 1)
        image = image.resize((scale, scale), resample=resample)
        image = np.array(image).astype(np.uint8)
        image = (image / 127.5 - 1.0).astype(np.float32)
        instance_image = np.zeros((self.size, self.size, 3), dtype=np.float32)
        mask = np.zeros((self.size // factor, self.size // factor))
        if scale > self.size:
            instance_image = image[top : top + inner, left : left + inner, :]
            mask = np.ones((self.size // factor, self.size // factor))
        else:
            instance_image[top : top + inner, left : left + inner, :] = image
            mask[top // factor + 1 : (top + scale) // factor - 1, left // factor + 1 : (left + scale) // factor - 1] = 1.0
        return instance_image, mask

    def __getitem__(self, index):  # :260-291
        example = {}
        path, prompt = self.paths[index % len(self.paths)]
        image = Image.open(path)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = tv_flip(image, 0.0)  # self.flip: RandomHorizontalFlip(0.5 * hflip), hflip off
        random_scale = self.size
        random_scale = (np.random.randint(self.size // 3, self.size + 1) if np.random.uniform() < 0.66
                        else np.random.randint(int(1.2 * self.size), int(1.4 * self.size)))
        image, mask = self.preprocess(image, random_scale, Image.BILINEAR)
        if random_scale < 0.6 * self.size:
            prompt = np.random.choice(["a far away ", "very small "]) + prompt
        elif random_scale > self.size:
            prompt = np.random.choice(["zoomed in ", "close up "]) + prompt
        example["instance_images"] = torch.from_numpy(image).permute(2, 0, 1)
        example["mask"] = torch.from_numpy(mask)
        example["instance_prompt_ids"] = self.tokenizer(prompt, truncation=True, padding="max_length",
                                                        max_length=self.tokenizer.model_max_length,
                                                        return_tensors="pt").input_ids
        return example


def custom_diffusion_collate(examples):
    """collate_fn, train_custom_diffusion.py:134-152 (no prior preservation)."""
    input_ids = torch.cat([e["instance_prompt_ids"] for e in examples], dim=0)
    pixel_values = torch.stack([e["instance_images"] for e in examples])
    mask = torch.stack([e["mask"] for e in examples])
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    mask = mask.to(memory_format=torch.contiguous_format).float()
    return {"input_ids": input_ids, "pixel_values": pixel_values, "mask": mask.unsqueeze(1)}


def _adamw(params, lr):
    """The scripts' optimizer: AdamW, --adam_beta1 0.9, --adam_beta2 0.999, --adam_weight_decay 1e-2, --adam_epsilon
    1e-8 (e.g. textual_inversion.py:741-747, train_dreambooth_lora.py:1075-1081)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)


class Reference:
    """One script's setup and step on ``pipe`` (modified in place: give it a pipeline of its own)."""

    def __init__(self, method: str, pipe, images: str | Path, batch: int, resolution: int):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.method, self.batch = method, batch
        self.accelerator = Accelerator(mixed_precision="no")  # e.g. textual_inversion.py:603-608
        self.tokenizer, self.text_encoder, self.vae, self.unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
        self.vae_scale = pipe.vae_scale_factor
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # each script: from the model's folder
        self.weight_dtype = torch.float32  # --mixed_precision no
        setup = {"ti": self._setup_ti, "lora": self._setup_lora, "custom-diffusion": self._setup_cd,
                 "dreambooth": self._setup_db}[method]
        params, dataset, collate = setup(images, resolution)
        self.params = params
        self.lr_scheduler = get_scheduler("constant", optimizer=self.optimizer, num_warmup_steps=0,
                                          num_training_steps=10**6)  # --lr_scheduler constant (each script's default)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate,
                                                  num_workers=0)  # --dataloader_num_workers 0
        self._iter = iter(self.loader)

    # -- setups ---------------------------------------------------------------------------------------------------
    def _setup_ti(self, images, resolution):
        tok, te = self.tokenizer, self.text_encoder
        tok.add_tokens(["<mycat>"])  # textual_inversion.py:672-690 (one vector)
        init_id = tok.encode("cat", add_special_tokens=False)[0]
        self.placeholder_ids = tok.convert_tokens_to_ids(["<mycat>"])
        te.resize_token_embeddings(len(tok))  # :693
        with torch.no_grad():  # :696-699
            te.get_input_embeddings().weight.data[self.placeholder_ids[0]] = te.get_input_embeddings().weight.data[init_id].clone()
        self.vae.requires_grad_(False)  # :702-708
        self.unet.requires_grad_(False)
        tm = te.text_model if hasattr(te, "text_model") else te  # :705
        tm.encoder.requires_grad_(False)
        tm.final_layer_norm.requires_grad_(False)
        tm.embeddings.position_embedding.requires_grad_(False)
        self.optimizer = _adamw(te.get_input_embeddings().parameters(), 1e-4)  # :741-747 (the whole embedding matrix)
        dataset = TextualInversionDataset(images, tok, self._size(resolution), "<mycat>")  # :750-760
        te.train()  # :788
        self.text_encoder, self.optimizer = self.accelerator.prepare(te, self.optimizer)  # :790-792
        self.unet.to(self.accelerator.device, dtype=self.weight_dtype)  # :803-804
        self.vae.to(self.accelerator.device, dtype=self.weight_dtype)
        self.orig_embeds_params = self.accelerator.unwrap_model(te).get_input_embeddings().weight.data.clone()  # :867
        return list(te.get_input_embeddings().parameters()), dataset, None

    def _setup_lora(self, images, resolution):
        from peft import LoraConfig

        self.vae.requires_grad_(False)  # train_dreambooth_lora.py:903-905
        self.text_encoder.requires_grad_(False)
        self.unet.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, init_lora_weights="gaussian",  # :940-947
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]))
        params = list(filter(lambda p: p.requires_grad, self.unet.parameters()))  # :1071
        self.optimizer = _adamw(params, 1e-4)  # :1075-1081
        dataset = DreamBoothDataset(images, "a photo of sks cat", self.tokenizer, resolution, Image.Resampling.LANCZOS)
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)  # :1171-1173
        self.unet.train()  # :1246
        return params, dataset, dreambooth_collate

    def _setup_db(self, images, resolution):
        self.vae.requires_grad_(False)  # train_dreambooth.py:984-987 (the UNet stays trainable)
        self.text_encoder.requires_grad_(False)
        params = list(self.unet.parameters())  # :1045-1047
        self.optimizer = _adamw(params, 5e-6)  # :1048-1054
        dataset = DreamBoothDataset(images, "a photo of sks cat", self.tokenizer, resolution, Image.Resampling.BILINEAR)
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, self.optimizer)  # :1144-1146
        self.unet.train()  # :1233
        return params, dataset, dreambooth_collate

    def _setup_cd(self, images, resolution):
        from diffusers.loaders import AttnProcsLayers
        from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0

        tok, te, unet = self.tokenizer, self.text_encoder, self.unet
        tok.add_tokens(["<new1>"])  # train_custom_diffusion.py:846-869 (--modifier_token <new1>, init ktn)
        self.modifier_token_id = tok.convert_tokens_to_ids(["<new1>"])
        init_id = tok.encode("ktn", add_special_tokens=False)[0]
        te.resize_token_embeddings(len(tok))
        te.get_input_embeddings().weight.data[self.modifier_token_id[0]] = te.get_input_embeddings().weight.data[init_id]
        tm = te.text_model if hasattr(te, "text_model") else te  # :877-883
        for p in itertools.chain(tm.encoder.parameters(), tm.final_layer_norm.parameters(),
                                 tm.embeddings.position_embedding.parameters()):
            p.requires_grad = False
        self.vae.requires_grad_(False)  # :887-890
        unet.requires_grad_(False)
        procs = {}  # :935-974 (--freeze_model crossattn_kv: train_kv, not q/out)
        st = unet.state_dict()
        for name in unet.attn_processors:
            cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
            if name.startswith("mid_block"):
                hidden = unet.config.block_out_channels[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
            else:
                hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
            layer = name.split(".processor")[0]
            weights = {"to_k_custom_diffusion.weight": st[layer + ".to_k.weight"],
                       "to_v_custom_diffusion.weight": st[layer + ".to_v.weight"]}
            if cross is not None:
                procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False, hidden_size=hidden,
                                                              cross_attention_dim=cross).to(unet.device)
                procs[name].load_state_dict(weights)
            else:
                procs[name] = CustomDiffusionAttnProcessor2_0(train_kv=False, train_q_out=False, hidden_size=hidden,
                                                              cross_attention_dim=cross)
        del st
        unet.set_attn_processor(procs)
        self.cd_layers = AttnProcsLayers(unet.attn_processors)  # :976
        params = list(itertools.chain(te.get_input_embeddings().parameters(), self.cd_layers.parameters()))
        self.optimizer = _adamw(params, 1e-5)  # :1010-1017
        dataset = CustomDiffusionDataset(images, "photo of a <new1> cat", tok, resolution,  # mask_size: the latent side (:1024-1030)
                                         resolution // self.vae_scale)
        self.cd_layers, te, self.optimizer = self.accelerator.prepare(self.cd_layers, te, self.optimizer)  # :1066-1068
        self.text_encoder = te
        unet.train()  # :1137-1139
        te.train()
        return params, dataset, custom_diffusion_collate

    @staticmethod
    def _size(resolution):
        return resolution

    # -- one step -------------------------------------------------------------------------------------------------
    def next_batch(self) -> dict:
        """The DataLoader's next batch (files read and transformed, prompts tokenized), a new epoch when it ends."""
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = iter(self.loader)
            return next(self._iter)

    def prepare(self, batch: dict) -> dict:
        """VAE encoding, noise, timesteps, noisy latents (e.g. textual_inversion.py:874-886,
        train_dreambooth_lora.py:1251-1271); the frozen text encoder's states (lora :1274-1282, dreambooth :1260-1268)."""
        latents = self.vae.encode(batch["pixel_values"].to(dtype=self.weight_dtype)).latent_dist.sample().detach()
        latents = latents * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
        timesteps = timesteps.long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prep = {"noisy": noisy, "timesteps": timesteps, "latents": latents, "noise": noise, "batch": batch}
        if self.method in ("lora", "dreambooth"):  # encode_prompt, text_encoder_use_attention_mask off (lora :742-758)
            prep["states"] = self.text_encoder(batch["input_ids"].to(self.text_encoder.device), attention_mask=None,
                                               return_dict=False)[0]
        return prep

    def _target(self, prep):
        if self.noise_scheduler.config.prediction_type == "epsilon":
            return prep["noise"]
        return self.noise_scheduler.get_velocity(prep["latents"], prep["noise"], prep["timesteps"])

    def core(self, prep: dict) -> torch.Tensor:
        """Trainable text encoding, UNet, loss, backward, clip, optimizer + scheduler step, zero_grad, fix-ups."""
        acc, batch = self.accelerator, prep["batch"]
        if self.method == "ti":  # textual_inversion.py:889-918
            states = self.text_encoder(batch["input_ids"])[0].to(dtype=self.weight_dtype)
            pred = self.unet(prep["noisy"], prep["timesteps"], states).sample
            loss = F.mse_loss(pred.float(), self._target(prep).float(), reduction="mean")
            acc.backward(loss)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
            index_no_updates = torch.ones((len(self.tokenizer),), dtype=torch.bool)  # :911-918
            index_no_updates[min(self.placeholder_ids) : max(self.placeholder_ids) + 1] = False
            with torch.no_grad():
                acc.unwrap_model(self.text_encoder).get_input_embeddings().weight[index_no_updates] = (
                    self.orig_embeds_params[index_no_updates])
            return loss
        if self.method == "custom-diffusion":  # train_custom_diffusion.py:1157-1224
            states = self.text_encoder(batch["input_ids"])[0]
            pred = self.unet(prep["noisy"], prep["timesteps"], states).sample
            mask = batch["mask"]
            loss = F.mse_loss(pred.float(), self._target(prep).float(), reduction="none")
            loss = ((loss * mask).sum([1, 2, 3]) / mask.sum([1, 2, 3])).mean()
            acc.backward(loss)
            grads = self.text_encoder.get_input_embeddings().weight.grad  # :1191-1201
            index_grads_to_zero = torch.arange(len(self.tokenizer)) != self.modifier_token_id[0]
            grads.data[index_grads_to_zero, :] = grads.data[index_grads_to_zero, :].fill_(0)
            if acc.sync_gradients:  # :1203-1209
                acc.clip_grad_norm_(itertools.chain(self.text_encoder.parameters(), self.cd_layers.parameters()), 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=False)  # --set_grads_to_none off
            return loss
        # lora (train_dreambooth_lora.py:1292-1335) and dreambooth (train_dreambooth.py:1276-1343)
        pred = self.unet(prep["noisy"], prep["timesteps"], prep["states"], class_labels=None, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), self._target(prep).float(), reduction="mean")
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(self.params if self.method == "lora" else self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.method == "lora":
            self.optimizer.zero_grad()  # lora :1334 (set_to_none by default)
        else:
            self.optimizer.zero_grad(set_to_none=False)  # dreambooth :1343, --set_grads_to_none off
        return loss
