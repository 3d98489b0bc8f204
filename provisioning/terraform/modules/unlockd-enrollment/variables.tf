variable "server_url" {
  description = "Escrow server URL as the host reaches it, e.g. https://escrow.example:8443."
  type        = string
  validation {
    condition     = can(regex("^https?://[A-Za-z0-9.:\\[\\]-]+(/[A-Za-z0-9._/-]*)?$", var.server_url))
    error_message = "server_url must be an http(s) URL without quotes or spaces."
  }
}

variable "admin_url" {
  description = "Escrow server URL as Terraform reaches it, for the admin API; null = server_url."
  type        = string
  default     = null
  validation {
    condition     = var.admin_url == null || can(regex("^https?://[A-Za-z0-9.:\\[\\]-]+(/[A-Za-z0-9._/-]*)?$", var.admin_url))
    error_message = "admin_url must be an http(s) URL."
  }
}

variable "operator_token" {
  description = "Operator API token (unlockd server init / unlockd operator add). Use a token for automation only."
  type        = string
  sensitive   = true
}

variable "ca_pem" {
  description = "PEM of the CA (or self-signed certificate) of the escrow server: Terraform trusts it for the API call and the host pins it. Empty = the system CAs."
  type        = string
  default     = ""
}

variable "host_name" {
  description = "Name of the host at the escrow server; the token works for this name only."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_.-]{0,63}$", var.host_name))
    error_message = "host_name must be 1-64 chars of a-z 0-9 _ . - starting with a letter or digit."
  }
}

variable "token_ttl_seconds" {
  description = "Lifetime of the enrollment token: long enough to cover plan, apply and first boot."
  type        = number
  default     = 1800
  validation {
    condition     = var.token_ttl_seconds >= 60 && var.token_ttl_seconds <= 86400
    error_message = "token_ttl_seconds must be 60..86400 (the server accepts up to 30 days; keep it short)."
  }
}

variable "enroll_cidrs" {
  description = "Networks the host may enroll from; they also become its unlock networks. [] = any."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for c in var.enroll_cidrs : can(cidrhost(c, 0))])
    error_message = "enroll_cidrs must be CIDRs such as 203.0.113.0/24."
  }
}

variable "agent_package_url" {
  description = "Where the host downloads the unlockd-agent Debian package (npm run package:deb makes dist/deb/unlockd-agent_VERSION_ARCH.deb)."
  type        = string
  validation {
    condition     = can(regex("^(https?|file)://[^\\s'\"]+$", var.agent_package_url))
    error_message = "agent_package_url must be an http(s) or file URL without quotes or spaces."
  }
}

variable "agent_package_sha256" {
  description = "SHA-256 of that package (sha256sum dist/deb/unlockd-agent_*.deb); the host refuses anything else."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.agent_package_sha256))
    error_message = "agent_package_sha256 must be 64 lowercase hex digits."
  }
}

variable "luks_volumes" {
  description = "LUKS2 volumes to bind: device (path or UUID=...) and name. They must exist at first boot."
  type        = list(object({ device = string, name = string }))
  default     = []
  validation {
    condition     = alltrue([for v in var.luks_volumes : can(regex("^(/|UUID=)[A-Za-z0-9._/=-]+$", v.device)) && can(regex("^[a-z0-9][a-z0-9_.-]{0,63}$", v.name))])
    error_message = "Each device must be an absolute path or UUID=... without quotes or spaces; each name 1-64 chars of a-z 0-9 _ . -."
  }
}

variable "luks_existing_key_file" {
  description = "File on the host with a key that opens every volume in luks_volumes."
  type        = string
  default     = ""
  validation {
    condition     = var.luks_existing_key_file == "" || can(regex("^/[A-Za-z0-9._/-]+$", var.luks_existing_key_file))
    error_message = "luks_existing_key_file must be an absolute path without quotes or spaces."
  }
}

variable "fscrypt_dirs" {
  description = "fscrypt directories to bind: path (made if missing, must be empty) and name."
  type        = list(object({ path = string, name = string }))
  default     = []
  validation {
    condition     = alltrue([for d in var.fscrypt_dirs : can(regex("^/[A-Za-z0-9._/-]+$", d.path)) && can(regex("^[a-z0-9][a-z0-9_.-]{0,63}$", d.name))])
    error_message = "Each path must be absolute without quotes or spaces; each name 1-64 chars of a-z 0-9 _ . -."
  }
}

variable "fscrypt_enable_ext4_encrypt" {
  description = "Turn on the ext4 'encrypt' feature of the filesystems holding fscrypt_dirs (works mounted; needs GRUB 2.04+ when /boot is on it)."
  type        = bool
  default     = false
}

