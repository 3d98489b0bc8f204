# Renders the cloud-init user-data from plain values. It has no provider and no data source, so
# it can be planned and applied offline; the parent module feeds it the token it minted, and the
# provisioning tests render it with the real terraform binary.

terraform {
  required_version = ">= 1.3"
}

variable "server_url" {
  type = string
}

variable "host_name" {
  type = string
}

variable "enroll_token" {
  description = "One-time enrollment token, or \"\" when the host is already enrolled."
  type        = string
  sensitive   = true
}

variable "ca_pem" {
  type    = string
  default = ""
}

variable "agent_package_url" {
  type = string
}

variable "agent_package_sha256" {
  type = string
}

variable "luks_volumes" {
  type    = list(object({ device = string, name = string }))
  default = []
}

variable "luks_existing_key_file" {
  type    = string
  default = ""
}

variable "fscrypt_dirs" {
  type    = list(object({ path = string, name = string }))
  default = []
}

variable "fscrypt_enable_ext4_encrypt" {
  type    = bool
  default = false
}

variable "manage_service" {
  type    = bool
  default = true
}

output "user_data" {
  description = "cloud-init user-data. Holds the one-time token: sensitive."
  sensitive   = true
  # The parent module's variable validations keep quotes, spaces and newlines out of these
  # values: the template puts each one inside single quotes in a shell script (the CA goes in
  # base64).
  value = templatefile("${path.module}/user-data.yaml.tftpl", {
    server_url                  = var.server_url
    host_name                   = var.host_name
    enroll_token                = var.enroll_token
    ca_pem_b64                  = var.ca_pem == "" ? "" : base64encode(var.ca_pem)
    agent_package_url           = var.agent_package_url
    agent_package_sha256        = var.agent_package_sha256
    luks_volumes                = join(" ", [for v in var.luks_volumes : "${v.device}:${v.name}"])
    luks_existing_key_file      = var.luks_existing_key_file
    fscrypt_dirs                = join(" ", [for d in var.fscrypt_dirs : "${d.path}:${d.name}"])
    fscrypt_enable_ext4_encrypt = var.fscrypt_enable_ext4_encrypt
    manage_service              = var.manage_service
  })
}
