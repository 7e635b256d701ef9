// Starts DynamoDB Local (Maven Central's com.amazonaws:DynamoDBLocal) from its own command-line arguments, but
// listening on one address: its Jetty server binds every interface and it has no option for that, and the loopback
// harness never listens beyond 127.0.0.0/8. Usage: java -cp 'LIB/*' DynamoDbLocalOnLoopback.java HOST ARGS...
import com.amazonaws.services.dynamodbv2.local.main.ServerRunner;
import com.amazonaws.services.dynamodbv2.local.server.DynamoDBProxyServer;
import java.lang.reflect.Field;
import java.util.Arrays;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;

public class DynamoDbLocalOnLoopback {
  public static void main(String[] args) throws Exception {
    DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(Arrays.copyOfRange(args, 1, args.length));
    Field field = DynamoDBProxyServer.class.getDeclaredField("server");
    field.setAccessible(true);
    Server jetty = (Server) field.get(proxy);
    for (Connector connector : jetty.getConnectors()) {
      ((ServerConnector) connector).setHost(args[0]);
    }
    proxy.start();
    System.out.println("DynamoDB Local listening on " + args[0]);
    proxy.join();
  }
}
