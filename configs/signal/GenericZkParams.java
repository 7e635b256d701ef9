// Prints a fresh GenericServerSecretParams pair (callingZkConfig/genericZkConfig) with the
// libsignal classes bundled in the server's own jar; Signal-Server v9.81.0 has no command for it.
// Run as a single-file program: java -cp TextSecureServer.jar GenericZkParams.java
import java.util.Base64;
import org.signal.libsignal.zkgroup.GenericServerSecretParams;

public class GenericZkParams {
  public static void main(String[] args) {
    GenericServerSecretParams secret = GenericServerSecretParams.generate();
    Base64.Encoder b64 = Base64.getEncoder().withoutPadding();
    System.out.println("Public: " + b64.encodeToString(secret.getPublicParams().serialize()));
    System.out.println("Private: " + b64.encodeToString(secret.serialize()));
  }
}
