terraform {
  # Postconditions need 1.2; optional() object attributes need 1.3.
  required_version = ">= 1.3"

  required_providers {
    http = {
      source = "hashicorp/http"
      # 3.1 added method/request_body, 3.2 ca_cert_pem, 3.4.2 stopped sending empty bodies.
      version = ">= 3.4.2, < 4.0.0"
    }
  }
}
